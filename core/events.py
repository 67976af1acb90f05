"""Live updates: PostgreSQL NOTIFY (sent in the transaction that records a transition)
fanned out to the browser pages that listen over server-sent events."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid

import psycopg
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)
EVENTS_CHANNEL = "backoffice_events"
QUEUE_SIZE = 100
RECONNECT_SECONDS = 2.0


def notify_request_changed(session: Session, request_id: uuid.UUID, kind: str) -> None:
    """Tell open pages that a request changed, once the caller's transaction commits.

    The same channel and payload as the workflow's transition recorder, so pages need not
    care whether a workflow or a person (claiming a task) made the change.
    """
    session.execute(
        text("SELECT pg_notify(:channel, :payload)"),
        {
            "channel": EVENTS_CHANNEL,
            "payload": json.dumps({"request_id": str(request_id), "kind": kind}),
        },
    )


def libpq_url(engine: Engine) -> str:
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


class EventHub:
    """One LISTEN connection per web process; each open page gets its own queue."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._subscribers: set[asyncio.Queue[str]] = set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def subscribe(self) -> asyncio.Queue[str]:
        queue: asyncio.Queue[str] = asyncio.Queue(QUEUE_SIZE)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[str]) -> None:
        self._subscribers.discard(queue)

    def publish(self, payload: str) -> None:
        for queue in list(self._subscribers):
            if queue.full():  # a stalled page misses events; it still re-polls on its own
                continue
            queue.put_nowait(payload)

    async def _listen(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._dsn, autocommit=True
                ) as conn:
                    await conn.execute(f"LISTEN {EVENTS_CHANNEL}")
                    async for notice in conn.notifies():
                        self.publish(notice.payload)
            except asyncio.CancelledError:
                raise
            except Exception:  # the database went away: keep trying, pages still poll
                log.warning("event listener lost its connection; retrying", exc_info=True)
                await asyncio.sleep(RECONNECT_SECONDS)

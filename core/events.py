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

from policies.engine import within_scope
from policies.snapshot import DataScope

log = logging.getLogger(__name__)
EVENTS_CHANNEL = "backoffice_events"
QUEUE_SIZE = 100
RECONNECT_SECONDS = 2.0


# The request's region and segment travel with the change, so each page's stream forwards
# only changes inside its viewer's data scope (see `change_for`).
_NOTIFY = text(
    "SELECT pg_notify(:channel, json_build_object("
    "'request_id', id, 'kind', CAST(:kind AS text), 'region', region, 'segment', segment"
    ")::text) FROM requests WHERE id = :request_id"
)


def notify_request_changed(session: Session, request_id: uuid.UUID, kind: str) -> None:
    """Tell open pages that a request changed, once the caller's transaction commits.

    The same channel and payload as the workflow's transition recorder, so pages need not
    care whether a workflow or a person (claiming a task) made the change.
    """
    session.execute(_NOTIFY, {"channel": EVENTS_CHANNEL, "kind": kind, "request_id": request_id})


def change_for(scope: DataScope, payload: str) -> str | None:
    """What a page of someone with this scope is told of a change: which request and how,
    or nothing when the request's player is outside the scope (or the payload is not ours)."""
    try:
        change = json.loads(payload)
        request_id, kind = str(change["request_id"]), str(change["kind"])
    except (ValueError, KeyError, TypeError):
        return None
    if not within_scope(scope, region=change.get("region"), segment=change.get("segment")):
        return None
    return json.dumps({"request_id": request_id, "kind": kind})


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

"""The Temporal dev server restarts on its file database: nothing in flight is lost or doubled.

This test starts its own dev server (`backoffice dev` runs it the same way, with
`--db-filename`), stops it while a payout is inside the platform action, lets that action
commit while Temporal is down, then SIGKILLs the worker before it could report the result:
the worst case for "exactly once". After the server and a new worker come back on the same
file, every request must still complete with one payment and one audit event per transition.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import Engine
from temporalio.api.enums.v1 import EventType

from core.db import SessionFactory
from core.embedded import TemporalDevServer
from core.runtime import Runtime
from core.settings import Settings
from core.temporal import connect
from tests.faults.conftest import (
    LARGE_TRAIL,
    WorkerProcess,
    assert_completed_once,
    free_port_block,
    harness,
    payment_state,
    processes_using,
    row_locks,
    wait_for_lock_waiters,
)
from tests.faults.helpers import approve, decide, decided, eventually, status, submitted
from workflows.contracts import approval_workflow_id

PAYMENT_LOCK = "SELECT 1 FROM payments WHERE id = :id FOR UPDATE"


@pytest.mark.timeout(180)
async def test_temporal_restart_on_its_file_database_loses_and_doubles_nothing(
    runtime: Runtime,
    settings: Settings,
    database_url: str,
    engine: Engine,
    sessions: SessionFactory,
    new_withdrawal,
    tmp_path: Path,
) -> None:
    server = TemporalDevServer(
        db_file=tmp_path / "temporal.db", port=free_port_block(3), ui_port=free_port_block(1)
    )
    log = tmp_path / "temporal.log"
    workers: list[WorkerProcess] = []
    try:
        server.start(log_file=log)
        client = await connect(server.address)
        async with harness(runtime, client, settings, database_url, tmp_path) as h:
            api, tokens, workers = h.api, h.tokens, h.workers.started
            first = await h.workers.start()
            payments = [new_withdrawal(f"{20_000 + 7 * i}.00") for i in range(4)]
            ids = list(await asyncio.gather(*(submitted(api, tokens, p) for p in payments)))
            r_lost_ack, r_done, r_wait_dir, r_wait_mgr = ids
            await asyncio.gather(
                *(approve(api, tokens, "fin.manager", r) for r in (r_lost_ack, r_done, r_wait_dir))
            )
            await approve(api, tokens, "fin.director", r_done)
            await eventually(lambda: status(sessions, r_done)[0] == "executed", "first payout")

            with row_locks(engine) as locks:
                locks.lock(PAYMENT_LOCK, id=payments[0])
                after = await approve(api, tokens, "fin.director", r_lost_ack)
                assert after["status"] == "approved"
                await wait_for_lock_waiters(engine, "UPDATE payments%", 1)
                server.stop()  # Temporal goes away while the payout is inside its UPDATE
            # The payout commits, but the worker cannot tell Temporal; then it dies.
            await eventually(
                lambda: payment_state(sessions, payments[0])[0] == "paid", "the payout commit"
            )
            paid = payment_state(sessions, payments[0])
            first.kill()

            # While Temporal is down, a decision gets a 503 and writes nothing.
            refused = await decide(api, tokens, "fin.manager", r_wait_mgr)
            assert refused.status_code == 503, refused.text
            assert decided(sessions, r_wait_mgr) == 0

            server.start(log_file=log)
            await h.workers.start(timeout=60)
            await asyncio.gather(
                approve(api, tokens, "fin.director", r_wait_dir),
                approve(api, tokens, "fin.manager", r_wait_mgr),
            )
            await approve(api, tokens, "fin.director", r_wait_mgr)
            # The lost result: Temporal retries the action when its attempt times out, and
            # the platform recognises it already paid this request.
            await eventually(
                lambda: all(status(sessions, r)[0] == "executed" for r in ids),
                "every request executed",
                timeout=90,
            )
            for request_id, payment_id in zip(ids, payments, strict=True):
                assert_completed_once(sessions, request_id, payment_id, LARGE_TRAIL)
            assert payment_state(sessions, payments[0]) == paid  # not paid a second time
            handle = client.get_workflow_handle(approval_workflow_id(r_lost_ack))
            attempts = [
                e.activity_task_started_event_attributes.attempt
                async for e in handle.fetch_history_events()
                if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
            ]
            assert attempts == [2]
    finally:
        server.stop()
    assert [w.pid for w in workers if w.process and w.process.poll() is None] == []
    await eventually(lambda: not processes_using(tmp_path), "no process left", timeout=10)

"""SIGKILL the worker process mid-chain and mid-action: every request still completes once.

The worker runs as a real `backoffice worker` process. To kill it at a known point, the
test first locks the database row the worker is about to write; the worker's statement then
waits inside its open transaction, and it is killed there. Whatever it was doing must not
leave half a transition, a duplicate audit event or a second payment behind.
"""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import Engine
from temporalio.api.enums.v1 import EventType, PendingActivityState

from core.db import SessionFactory
from tests.faults.conftest import (
    LARGE_TRAIL,
    SMALL_TRAIL,
    Harness,
    assert_completed_once,
    lock_waiters,
    payment_state,
    row_locks,
    wait_for_lock_waiters,
)
from tests.faults.helpers import (
    approve,
    audit_count,
    decide,
    decided,
    eventually,
    request_for,
    status,
    submit,
    submitted,
)
from workflows.contracts import ApprovalState, approval_workflow_id

STREAM_HEAD_LOCK = "SELECT 1 FROM audit_stream_heads WHERE stream = :stream FOR UPDATE"
# A new request row takes a key-share lock on its requester's user row (foreign key).
REQUESTER_LOCK = "SELECT 1 FROM users WHERE username = 'fin.clerk' FOR UPDATE"
PAYMENT_LOCK = "SELECT 1 FROM payments WHERE id = :id FOR UPDATE"


@pytest.mark.timeout(150)
async def test_worker_killed_mid_chain_every_request_completes_once(
    faults: Harness, engine: Engine, sessions: SessionFactory, new_withdrawal
) -> None:
    api, tokens = faults.api, faults.tokens
    for user in ("fin.clerk", "fin.manager", "fin.director"):
        await tokens.headers(user)  # log in now: no login while rows are locked
    first = await faults.workers.start()

    payments = [new_withdrawal(f"{10_000 + 111 * i}.00") for i in range(6)]
    ids = list(await asyncio.gather(*(submitted(api, tokens, p) for p in payments)))
    r_dir_inflight, r_done, r_wait_dir, r_mgr_inflight, r_wait_mgr, r_wait_mgr2 = ids
    for after in await asyncio.gather(
        *(approve(api, tokens, "fin.manager", r) for r in (r_dir_inflight, r_done, r_wait_dir))
    ):
        assert (after["status"], after["current_step"]) == ("pending", 1)
    await approve(api, tokens, "fin.director", r_done)
    await eventually(lambda: status(sessions, r_done)[0] == "executed", "the first payout")

    # Three pieces of work in flight, each stopped inside the worker's database transaction:
    # a director's decision, a manager's decision, and a brand-new submission.
    late_payment = new_withdrawal("12345.00")
    with row_locks(engine) as locks:
        locks.lock(STREAM_HEAD_LOCK, stream=f"request:{r_dir_inflight}")
        locks.lock(STREAM_HEAD_LOCK, stream=f"request:{r_mgr_inflight}")
        locks.lock(REQUESTER_LOCK)
        in_flight = [
            asyncio.create_task(decide(api, tokens, "fin.director", r_dir_inflight)),
            asyncio.create_task(decide(api, tokens, "fin.manager", r_mgr_inflight)),
            asyncio.create_task(submit(api, tokens, late_payment)),
        ]
        await wait_for_lock_waiters(engine, "%audit_stream_heads%FOR UPDATE%", 2)
        await wait_for_lock_waiters(engine, "INSERT INTO requests%", 1)
        first.kill()
    # The locks are gone; the dead worker's sessions find no one to commit for them.

    # While no worker runs, nobody gets an answer, and nothing is half-written.
    answers = await asyncio.gather(*in_flight)
    assert [a.status_code for a in answers] == [503, 503, 503], [a.text for a in answers]
    assert lock_waiters(engine, "%") == []
    assert decided(sessions, r_dir_inflight) == 1 and audit_count(sessions, r_dir_inflight) == 5
    assert decided(sessions, r_mgr_inflight) == 0 and audit_count(sessions, r_mgr_inflight) == 2
    assert request_for(sessions, late_payment) is None
    assert payment_state(sessions, payments[0])[0] == "pending"

    await faults.workers.start()
    # The submission was durably started: it lands in the read model without a retry.
    late = str(await eventually(lambda: request_for(sessions, late_payment), "the late submission"))
    # The people who saw a 503 reload and decide again; the rest decide for the first time.
    await asyncio.gather(
        approve(api, tokens, "fin.director", r_dir_inflight, retried=True),
        approve(api, tokens, "fin.manager", r_mgr_inflight, retried=True),
        approve(api, tokens, "fin.director", r_wait_dir),
        approve(api, tokens, "fin.manager", r_wait_mgr),
        approve(api, tokens, "fin.manager", r_wait_mgr2),
        approve(api, tokens, "fin.manager", late),
    )
    await eventually(lambda: status(sessions, r_mgr_inflight) == ("pending", 1), "step two")
    await asyncio.gather(
        *(
            approve(api, tokens, "fin.director", r)
            for r in (r_mgr_inflight, r_wait_mgr, r_wait_mgr2, late)
        )
    )

    requests = [*ids, late]
    await eventually(
        lambda: all(status(sessions, r)[0] == "executed" for r in requests),
        "every request executed",
        timeout=40,
    )
    for request_id, payment_id in zip(requests, [*payments, late_payment], strict=True):
        assert_completed_once(sessions, request_id, payment_id, LARGE_TRAIL)
    for request_id in requests:
        handle = faults.runtime.temporal.get_workflow_handle(
            approval_workflow_id(request_id), result_type=ApprovalState
        )
        assert (await handle.result()).status == "executed"


@pytest.mark.timeout(150)
async def test_worker_killed_inside_the_payment_update_pays_once(
    faults: Harness, engine: Engine, sessions: SessionFactory, new_withdrawal
) -> None:
    api, tokens = faults.api, faults.tokens
    first = await faults.workers.start()
    payment = new_withdrawal("2500.00")
    request_id = await submitted(api, tokens, payment)
    handle = faults.runtime.temporal.get_workflow_handle(approval_workflow_id(request_id))

    with row_locks(engine) as locks:
        locks.lock(PAYMENT_LOCK, id=payment)
        after = await approve(api, tokens, "fin.manager", request_id)
        assert after["status"] == "approved"
        # The platform action has started and waits inside its UPDATE of the payment.
        await wait_for_lock_waiters(engine, "UPDATE payments%", 1)
        pending = (await handle.describe()).raw_description.pending_activities
        assert [(a.activity_type.name, a.state, a.attempt) for a in pending] == [
            ("execute_action", PendingActivityState.PENDING_ACTIVITY_STATE_STARTED, 1)
        ]
        first.kill()
    # The dead worker's UPDATE may now run, but no one is left to commit it.
    await eventually(lambda: not lock_waiters(engine, "UPDATE payments%"), "the orphan UPDATE")
    assert payment_state(sessions, payment)[0] == "pending"
    assert status(sessions, request_id)[0] == "approved"

    await faults.workers.start()
    # Temporal retries the action once the lost attempt times out (start-to-close).
    await eventually(
        lambda: status(sessions, request_id)[0] == "executed", "the retried payout", timeout=90
    )
    assert_completed_once(sessions, request_id, payment, SMALL_TRAIL)
    attempts = [
        e.activity_task_started_event_attributes.attempt
        async for e in handle.fetch_history_events()
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    ]
    assert attempts == [2], "one retry, after the killed attempt"

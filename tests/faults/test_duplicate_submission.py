"""A withdrawal has at most one open approval request, however submissions interleave.

A slow or restarting worker stretches the time between a submission passing the API's
checks and its request reaching the read model; a second submission for the same payment
in that window (a double click, a second tab, a retry after a 503) must still be refused.
"""

from __future__ import annotations

import asyncio

from sqlalchemy import Engine

from core.db import SessionFactory
from tests.faults.conftest import Harness, lock_waiters, row_locks, wait_for_lock_waiters
from tests.faults.helpers import eventually, request_for, submit

# A new request row takes a key-share lock on its requester's user row (foreign key).
REQUESTER_LOCK = "SELECT 1 FROM users WHERE username = 'fin.clerk' FOR UPDATE"


async def test_two_submissions_for_one_withdrawal_open_one_request(
    faults: Harness, engine: Engine, sessions: SessionFactory, new_withdrawal
) -> None:
    api, tokens = faults.api, faults.tokens
    await tokens.headers("fin.clerk")
    await faults.workers.start()
    payment = new_withdrawal("640.00")
    with row_locks(engine) as locks:
        locks.lock(REQUESTER_LOCK)  # the worker is slow to record the first submission
        first = asyncio.create_task(submit(api, tokens, payment))
        await wait_for_lock_waiters(engine, "INSERT INTO requests%", 1)
        second = asyncio.create_task(submit(api, tokens, payment))
        # The second is refused at once, or it too waits for the worker to record it.
        await eventually(
            lambda: second.done() or len(lock_waiters(engine, "INSERT INTO requests%")) == 2,
            "the second submission to be answered or recorded",
        )
    answers = await asyncio.gather(first, second)
    opened = [a.json()["id"] for a in answers if a.status_code == 201]
    try:
        assert sorted(a.status_code for a in answers) == [201, 409], [a.text for a in answers]
        assert request_for(sessions, payment) == opened[0]
    finally:
        for request_id in opened:  # leave no open request in other tests' task lists
            cancelled = await api.post(
                f"/api/v1/requests/{request_id}/cancel",
                json={"reason": "duplicate"},
                headers=await tokens.headers("fin.clerk"),
            )
            assert cancelled.status_code == 200, cancelled.text

"""Replay committed histories: a change that breaks determinism fails here.

To record a fresh history after an intended, versioned change:
RECORD_HISTORIES=1 pytest tests/workflows/test_replay.py
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from tests.api.test_withdrawal_slice import decide, submit, wait_for_status
from workflows.approval import ApprovalWorkflow
from workflows.contracts import approval_workflow_id

HISTORIES = Path(__file__).parent / "histories"


@pytest.mark.skipif(not os.environ.get("RECORD_HISTORIES"), reason="records only on request")
async def test_record_histories(api, tokens, new_withdrawal, temporal_client) -> None:
    scenarios = {
        "approval_large_executed.json": ("25000.00", ["fin.manager", "fin.director"], "approve"),
        "approval_rejected.json": ("80.00", ["fin.manager"], "reject"),
    }
    for filename, (amount, approvers, verdict) in scenarios.items():
        request = (await submit(api, tokens, new_withdrawal(amount))).json()
        for user in approvers:
            await decide(api, tokens, user, request["id"], verdict)
        await wait_for_status(
            api, tokens, request["id"], "executed" if verdict == "approve" else "rejected"
        )
        handle = temporal_client.get_workflow_handle(approval_workflow_id(request["id"]))
        await handle.result()
        history = await handle.fetch_history()
        (HISTORIES / filename).write_text(history.to_json())


@pytest.mark.parametrize("path", sorted(HISTORIES.glob("*.json")), ids=lambda p: p.stem)
async def test_committed_history_replays(path: Path) -> None:
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    result = await Replayer(workflows=[ApprovalWorkflow]).replay_workflow(
        history, raise_on_replay_failure=False
    )
    assert result.replay_failure is None, result.replay_failure


def test_histories_are_committed() -> None:
    assert len(list(HISTORIES.glob("*.json"))) >= 2

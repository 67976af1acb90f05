"""ApprovalWorkflow against a real Temporal dev server: validators, SLA, expiry, retries."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from activities.approval import ApprovalActivities
from core.models import AuditEvent, Decision, Notification, Task, User
from core.platform import BuiltinPlatform
from tests.api.test_withdrawal_slice import audit_actions, submit, wait_for_status
from workflows.approval import ApprovalWorkflow
from workflows.contracts import (
    DecisionInput,
    Origin,
    ScopeInput,
    Transition,
    TransitionBatch,
    approval_workflow_id,
)

_USER_IDS: dict[str, int] = {}


@pytest.fixture(autouse=True)
def _user_ids(sessions) -> None:
    if not _USER_IDS:
        with sessions() as session:
            _USER_IDS.update({u.username: u.id for u in session.execute(select(User)).scalars()})


def decision(user: str, roles: list[str], verdict: str = "approve") -> DecisionInput:
    return DecisionInput(
        user=user,
        user_id=_USER_IDS[user],
        roles=roles,
        decision=verdict,
        scopes=[ScopeInput(regions=["*"], segments=["*"], max_amount=None)],
    )


async def refused(handle, command: DecisionInput) -> ApplicationError:
    """Send an Update straight to the workflow (bypassing the API's own checks)."""
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await handle.execute_update(ApprovalWorkflow.decide, command)
    cause = info.value.cause
    assert isinstance(cause, ApplicationError)
    return cause


async def started(api, tokens, new_withdrawal, temporal_client, amount: str = "500.00"):
    request = (await submit(api, tokens, new_withdrawal(amount))).json()
    return request, temporal_client.get_workflow_handle(approval_workflow_id(request["id"]))


async def test_validator_refuses_the_requester(api, tokens, new_withdrawal, temporal_client):
    _, handle = await started(api, tokens, new_withdrawal, temporal_client)
    cause = await refused(handle, decision("fin.clerk", ["finance.manager"]))
    assert cause.type == "own_request"


async def test_validator_refuses_a_person_without_the_step_role(
    api, tokens, new_withdrawal, temporal_client
):
    _, handle = await started(api, tokens, new_withdrawal, temporal_client)
    cause = await refused(handle, decision("fin.director", ["finance.director"]))
    assert cause.type == "missing_role"
    assert "finance.manager" in cause.message


async def test_validator_refuses_the_same_person_twice_across_steps(
    api, tokens, new_withdrawal, temporal_client, sessions
):
    request, handle = await started(api, tokens, new_withdrawal, temporal_client, "20000.00")
    # One person holding both roles approves step one, then may not approve step two.
    both = ["finance.manager", "finance.director"]
    state = await handle.execute_update(ApprovalWorkflow.decide, decision("fin.manager", both))
    assert state.current_step == 1
    cause = await refused(handle, decision("fin.manager", both))
    assert cause.type == "already_decided"
    with sessions() as session:
        count = session.execute(
            select(func.count())
            .select_from(Decision)
            .where(Decision.request_id == uuid.UUID(request["id"]))
        ).scalar_one()
    assert count == 1


async def test_validator_refuses_decisions_once_closed(
    api, tokens, new_withdrawal, temporal_client
):
    request, handle = await started(api, tokens, new_withdrawal, temporal_client)
    await handle.execute_update(
        ApprovalWorkflow.decide, decision("fin.manager", ["finance.manager"])
    )
    await wait_for_status(api, tokens, request["id"], "executed")
    with pytest.raises(Exception) as info:  # the workflow has completed: the server refuses
        await handle.execute_update(
            ApprovalWorkflow.decide, decision("fin.manager2", ["finance.manager"])
        )
    assert "completed" in str(info.value).lower() or isinstance(
        info.value, WorkflowUpdateFailedError
    )


async def test_validator_refuses_an_unknown_verdict(api, tokens, new_withdrawal, temporal_client):
    _, handle = await started(api, tokens, new_withdrawal, temporal_client)
    cause = await refused(handle, decision("fin.manager", ["finance.manager"], "maybe"))
    assert cause.type == "bad_decision"


async def test_sla_breach_is_recorded_notified_and_the_request_still_decidable(
    api, tokens, new_withdrawal, temporal_env: WorkflowEnvironment, sessions
):
    request = (await submit(api, tokens, new_withdrawal("900.00"))).json()
    handle = temporal_env.client.get_workflow_handle(approval_workflow_id(request["id"]))
    await temporal_env.fast_forward(handle, timedelta(hours=5))  # the step's SLA is 4h
    assert "request.sla_breached" in audit_actions(sessions, request["id"])
    with sessions() as session:
        task = session.execute(
            select(Task).where(Task.request_id == uuid.UUID(request["id"]))
        ).scalar_one()
        assert task.sla_breached_at is not None
        roles = set(
            session.execute(
                select(Notification.recipient_role).where(
                    Notification.request_id == uuid.UUID(request["id"]),
                    Notification.kind == "sla_breached",
                )
            ).scalars()
        )
    assert roles == {"finance.manager", "finance.director"}  # the step's role and its escalation
    tasks = (
        await api.get(
            "/api/v1/tasks?min_amount=900&max_amount=900&limit=200",
            headers=await tokens.headers("fin.manager"),
        )
    ).json()
    mine = [t for t in tasks["items"] if t["request_id"] == request["id"]]
    assert mine and mine[0]["sla_breached"] is True
    decided = await api.post(
        f"/api/v1/requests/{request['id']}/decision",
        json={"decision": "approve", "comment": "late but fine"},
        headers=await tokens.headers("fin.manager"),
    )
    assert decided.status_code == 200
    await wait_for_status(api, tokens, request["id"], "executed")


async def test_request_expires_when_nobody_decides(
    api, tokens, new_withdrawal, temporal_env: WorkflowEnvironment, sessions
):
    request = (await submit(api, tokens, new_withdrawal("901.00"))).json()
    handle = temporal_env.client.get_workflow_handle(approval_workflow_id(request["id"]))
    await temporal_env.fast_forward(handle, timedelta(days=3, minutes=1))
    final = await wait_for_status(api, tokens, request["id"], "expired")
    assert final["steps"][0]["status"] == "expired"
    assert audit_actions(sessions, request["id"])[-1] == "request.expired"
    late = await api.post(
        f"/api/v1/requests/{request['id']}/decision",
        json={"decision": "approve"},
        headers=await tokens.headers("fin.manager"),
    )
    assert late.status_code == 409


async def test_recording_a_transition_twice_writes_once(api, tokens, new_withdrawal, sessions):
    """An activity retried after its commit (lost acknowledgement) must not write again."""
    request = (await submit(api, tokens, new_withdrawal("33.00"))).json()
    activities = ApprovalActivities(sessions, BuiltinPlatform(sessions))
    transition = Transition(
        event_id=str(uuid.uuid4()),
        request_id=request["id"],
        kind="sla_breached",
        actor="system",
        actor_type="system",
        occurred_at=datetime.now(UTC),
        origin=Origin(channel="workflow"),
        step_index=0,
        data={"due_at": datetime.now(UTC).isoformat(), "escalate_to": "finance.director"},
    )

    def counts() -> tuple[int, int]:
        with sessions() as session:
            events = session.execute(
                select(func.count())
                .select_from(AuditEvent)
                .where(AuditEvent.stream == f"request:{request['id']}")
            ).scalar_one()
            notes = session.execute(
                select(func.count())
                .select_from(Notification)
                .where(Notification.request_id == uuid.UUID(request["id"]))
            ).scalar_one()
        return events, notes

    before = counts()
    assert activities.record_transitions(TransitionBatch([transition])) == 1
    once = counts()
    assert activities.record_transitions(TransitionBatch([transition])) == 0
    assert counts() == once == (before[0] + 1, before[1] + 2)

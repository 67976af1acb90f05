"""Recording approval transitions: one audit event and its read-model change, atomically."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from core import audit
from core.events import notify_request_changed
from core.repositories import requests as requests_repo
from workflows.contracts import (
    APPROVED,
    CANCELLED,
    EXECUTED,
    EXPIRED,
    FAILED,
    REJECTED,
    Transition,
    approval_workflow_id,
)

_HIGH = "high"

# kind -> (audit action, sensitivity)
_AUDIT_ACTIONS: dict[str, tuple[str, str]] = {
    "submitted": ("request.submitted", _HIGH),
    "step_opened": ("request.step_opened", "normal"),
    "decided": ("request.decision", _HIGH),
    "step_approved": ("request.step_approved", "normal"),
    "sla_breached": ("request.sla_breached", "normal"),
    "approved": ("request.approved", _HIGH),
    "rejected": ("request.rejected", _HIGH),
    "expired": ("request.expired", "normal"),
    "cancelled": ("request.cancelled", "normal"),
    "executed": ("request.executed", _HIGH),
    "failed": ("request.failed", _HIGH),
    "reverted": ("request.reverted", _HIGH),
    "revert_failed": ("request.revert_failed", _HIGH),
}
KNOWN_KINDS = frozenset(_AUDIT_ACTIONS)


def request_stream(request_id: str | uuid.UUID) -> str:
    return f"request:{request_id}"


def record_transition(session: Session, transition: Transition) -> bool:
    """Append the audit event and apply the read-model change in the caller's transaction.

    Returns False (and writes nothing) when this transition was already recorded, so an
    activity retry after a lost acknowledgement is harmless.
    """
    if transition.kind not in KNOWN_KINDS:
        raise ValueError(f"unknown transition {transition.kind!r}")
    action, sensitivity = _AUDIT_ACTIONS[transition.kind]
    request_id = uuid.UUID(transition.request_id)
    before, after = _audit_payload(transition)
    result = audit.append(
        session,
        audit.NewAuditEvent(
            event_id=uuid.UUID(transition.event_id),
            stream=request_stream(request_id),
            action=action,
            target=_audit_target(transition),
            actor=transition.actor,
            actor_type=transition.actor_type,
            channel=transition.origin.channel,
            occurred_at=transition.occurred_at,
            before=before,
            after=after,
            sensitivity=sensitivity,
            ip=transition.origin.ip,
            device=transition.origin.device,
        ),
    )
    if not result.created:
        return False
    _apply_read_model(session, transition, request_id, result.event.event_id)
    notify_request_changed(session, uuid.UUID(transition.request_id), transition.kind)
    return True


def _audit_target(transition: Transition) -> str:
    """The business object: the payment for submission and execution, else the request."""
    data = transition.data
    if transition.kind == "submitted":
        return str(data["target"])
    if transition.kind in ("executed", "reverted") and isinstance(data.get("after"), dict):
        return str(data["after"].get("id") or request_stream(transition.request_id))
    return request_stream(transition.request_id)


def _audit_payload(transition: Transition) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    data = transition.data
    kind = transition.kind
    if kind == "submitted":
        chain = data["chain"]
        return None, {
            "action": data["action"],
            "target": data["target"],
            "params": data["params"],
            "reason": data["reason"],
            "status": "pending",
            "policy_version": chain["policy_version"],
            "tier": chain["tier"],
            "steps": [step["name"] for step in chain["steps"]],
            "expires_at": data["expires_at"],
        }
    if kind in ("executed", "reverted"):
        return data.get("before"), data.get("after")
    if kind in (APPROVED, REJECTED, EXPIRED, CANCELLED, FAILED):
        after = {"status": kind, **{k: v for k, v in data.items() if k != "user_id"}}
        return {"status": "pending" if kind != FAILED else APPROVED}, after
    after = {k: v for k, v in data.items() if k != "user_id"}
    if transition.step_index is not None:
        after["step"] = transition.step_index
    return None, after or None


def _apply_read_model(
    session: Session, transition: Transition, request_id: uuid.UUID, event_id: uuid.UUID
) -> None:
    at: datetime = transition.occurred_at
    data = transition.data
    kind = transition.kind
    step = transition.step_index
    if kind == "submitted":
        chain = data["chain"]
        requests_repo.insert_request(
            session,
            request_id=request_id,
            workflow_id=approval_workflow_id(transition.request_id),
            action=data["action"],
            target=data["target"],
            params=data["params"],
            reason=data["reason"],
            requester_id=int(data["requester_id"]),
            region=data.get("region"),
            segment=data.get("segment"),
            policy_version=chain["policy_version"],
            chain=chain,
            created_at=at,
            expires_at=datetime.fromisoformat(data["expires_at"]),
        )
    elif kind == "step_opened":
        assert step is not None
        requests_repo.open_step(
            session, request_id, step, at, datetime.fromisoformat(data["due_at"])
        )
    elif kind == "decided":
        assert step is not None
        requests_repo.add_decision(
            session,
            request_id=request_id,
            step_index=step,
            user_id=int(data["user_id"]),
            decision=data["decision"],
            comment=data.get("comment", ""),
            channel=transition.origin.channel,
            at=at,
            on_behalf_of_id=data.get("on_behalf_of_id"),
        )
    elif kind == "step_approved":
        assert step is not None
        requests_repo.close_step(session, request_id, step, "approved", at)
    elif kind == "sla_breached":
        assert step is not None
        requests_repo.mark_sla_breached(session, request_id, step, at)
        _notify_sla_breach(session, request_id, event_id, step, data, at)
    elif kind == APPROVED:
        requests_repo.set_request_status(session, request_id, status=APPROVED, at=at)
    elif kind in (REJECTED, EXPIRED, CANCELLED):
        requests_repo.close_remaining_steps(session, request_id, kind, at)
        requests_repo.set_request_status(session, request_id, status=kind, at=at, terminal=True)
        _notify_requester(session, request_id, event_id, kind, at)
    elif kind in (EXECUTED, FAILED):
        outcome = data.get("summary") or data.get("error")
        revert_at = data.get("revert_at")
        requests_repo.set_request_status(
            session,
            request_id,
            status=kind,
            at=at,
            outcome=outcome,
            terminal=True,
            revert_at=datetime.fromisoformat(revert_at) if revert_at else None,
        )
        _notify_requester(session, request_id, event_id, kind, at)
    elif kind in ("reverted", "revert_failed"):
        outcome = data.get("summary") or f"Revert failed: {data.get('error')}"
        requests_repo.record_revert(session, request_id, at, outcome, reverted=kind == "reverted")
        _notify_requester(session, request_id, event_id, kind, at)


def _notify_sla_breach(
    session: Session,
    request_id: uuid.UUID,
    event_id: uuid.UUID,
    step_index: int,
    data: dict[str, Any],
    at: datetime,
) -> None:
    request = requests_repo.get(session, request_id)
    assert request is not None
    step = request.chain["steps"][step_index]
    message = (
        f"SLA breached: '{step['name']}' on {request.action} {request.target} "
        f"was due {data['due_at'][:16].replace('T', ' ')} UTC"
    )
    recipients = list(step["roles"])
    if data.get("escalate_to") and data["escalate_to"] not in recipients:
        recipients.append(data["escalate_to"])
    for role in recipients:
        requests_repo.add_notification(
            session,
            event_id=event_id,
            request_id=request_id,
            kind="sla_breached",
            message=message,
            at=at,
            role=role,
        )


def _notify_requester(
    session: Session, request_id: uuid.UUID, event_id: uuid.UUID, status: str, at: datetime
) -> None:
    request = requests_repo.get(session, request_id)
    assert request is not None
    requests_repo.add_notification(
        session,
        event_id=event_id,
        request_id=request_id,
        kind=status,
        message=f"Your request {request.action} {request.target} is {status}",
        at=at,
        user_id=request.requester_id,
    )

"""Just-in-time elevation: ask for a role for some hours, renew it, end it early.

The one path for web and API. The policy engine decides who may ask (the
`access.elevation:request` permission), which roles and durations are allowed (the
action's params) and which chain approves (a tier by the role's sensitivity). Each
elevation is a JitAccessWorkflow whose approvals are ordinary requests.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from temporalio.client import WithStartWorkflowOperation
from temporalio.common import WorkflowIDConflictPolicy

from activities.jit import (
    ACTIVE,
    EXPIRED,
    JIT_ACTION,
    OPEN_STATUSES,
    JitInput,
    RenewInput,
    RevokeInput,
    jit_workflow_id,
)
from core.models import JitGrant, User
from core.request_service import (
    MAX_REASON,
    RequestError,
    _send_update,
    refusal,
    text_problem,
)
from core.runtime import Runtime
from policies.snapshot import Principal
from workflows.approval import ApprovalWorkflow
from workflows.contracts import ApprovalInput, Origin, approval_workflow_id
from workflows.jit import JitAccessWorkflow

MANAGE = "jit:manage"
LIST_SIZE = 200
# A role whose permissions include one of these verbs is sensitive: a longer chain.
_SENSITIVE_VERBS = ("approve", "manage", "manage_all", "reassign", "export", "*")


@dataclass(frozen=True)
class GrantRow:
    grant: JitGrant
    username: str
    display_name: str
    revoked_by: str | None = None

    def state(self, now: datetime) -> str:
        """The status in force: an active grant past its expiry is expired already."""
        grant = self.grant
        if grant.status == ACTIVE and grant.expires_at is not None and grant.expires_at <= now:
            return EXPIRED
        return grant.status

    def seconds_left(self, now: datetime) -> int:
        if self.state(now) != ACTIVE or self.grant.expires_at is None:
            return 0
        return int((self.grant.expires_at - now).total_seconds())


def role_sensitivity(rt: Runtime, role: str) -> int:
    """2 for a role that approves, administers or exports; 1 for the rest."""
    definition = rt.policy.roles.roles[role]
    verbs = {permission.partition(":")[2] or "*" for permission in definition.permissions}
    return 2 if verbs.intersection(_SENSITIVE_VERBS) else 1


def requestable_roles(rt: Runtime) -> list[str]:
    chain = rt.policy.chain_definition(JIT_ACTION)
    assert chain is not None and chain.params["role"].choices is not None
    return list(chain.params["role"].choices)


def _reason(reason: str) -> str:
    cleaned = reason.strip()
    problem = "a reason is required" if not cleaned else text_problem(cleaned, MAX_REASON)
    if problem is not None:
        raise RequestError(422, f"reason: {problem}", {"reason": problem})
    return cleaned


def _approval(
    rt: Runtime,
    session: Session,
    principal: Principal,
    role: str,
    duration_hours: object,
    reason: str,
    origin: Origin,
) -> ApprovalInput:
    """The approval request of an elevation or its renewal, checked against the policy."""
    verdict = rt.policy.may_request(principal, JIT_ACTION)
    if not verdict:
        raise refusal(verdict)
    cleaned_reason = _reason(reason)
    params, errors = rt.policy.validate_params(
        JIT_ACTION, {"role": role, "duration_hours": duration_hours}, datetime.now(UTC)
    )
    if errors:
        fields = {e.field: e.message for e in errors}
        raise RequestError(422, "; ".join(f"{e.field} {e.message}" for e in errors), fields)
    params["sensitivity"] = str(role_sensitivity(rt, params["role"]))
    me = session.get(User, principal.user_id)
    return ApprovalInput(
        request_id=str(uuid.uuid4()),
        action=JIT_ACTION,
        target=principal.username,
        params=params,
        reason=cleaned_reason,
        requester=principal.username,
        requester_id=principal.user_id,
        chain=rt.policy.chain_for(JIT_ACTION, params),
        origin=origin,
        requester_team=me.team if me is not None else None,
        decisions_carry_scopes=True,
    )


async def _await_submitted(rt: Runtime, approval: ApprovalInput) -> None:
    """Wait until the approval (started by the elevation's workflow) is in the read model."""
    handle = rt.temporal.get_workflow_handle(approval_workflow_id(approval.request_id))
    await _send_update(handle.execute_update(ApprovalWorkflow.submitted))


async def request_elevation(
    rt: Runtime,
    principal: Principal,
    role: str,
    duration_hours: object,
    reason: str,
    origin: Origin,
) -> GrantRow:
    def prepare() -> ApprovalInput:
        with rt.sessions() as session:
            approval = _approval(rt, session, principal, role, duration_hours, reason, origin)
            chosen = approval.params["role"]
            if chosen in principal.roles:
                raise RequestError(409, f"you already hold {chosen}", {"role": "already held"})
            if _open_grant(session, principal.user_id, chosen) is not None:
                raise RequestError(
                    409, f"you already asked for {chosen}; see My access", {"role": "asked"}
                )
            return approval

    approval = await asyncio.to_thread(prepare)
    grant_id = str(uuid.uuid4())
    start = WithStartWorkflowOperation(
        JitAccessWorkflow.run,
        JitInput(
            grant_id=grant_id,
            event_id=str(uuid.uuid4()),
            user_id=principal.user_id,
            username=principal.username,
            role=approval.params["role"],
            reason=approval.reason,
            requested_at=datetime.now(UTC),
            approval=approval,
            origin=origin,
        ),
        id=jit_workflow_id(grant_id),
        id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
        task_queue=rt.task_queue,
    )
    await _send_update(
        rt.temporal.execute_update_with_start_workflow(
            JitAccessWorkflow.approval_started, start_workflow_operation=start
        )
    )
    await _await_submitted(rt, approval)
    return await asyncio.to_thread(load, rt, principal, uuid.UUID(grant_id))


async def renew(
    rt: Runtime,
    principal: Principal,
    grant_id: uuid.UUID,
    duration_hours: object,
    reason: str,
    origin: Origin,
) -> GrantRow:
    def prepare() -> ApprovalInput:
        with rt.sessions() as session:
            row = visible(rt, session, principal, grant_id)
            if row.grant.user_id != principal.user_id:
                raise RequestError(403, "only the holder renews an elevation")
            _require_active(row)
            if row.grant.pending_request_id is not None:
                raise RequestError(
                    409, f"renewal request {row.grant.pending_request_id} is still open"
                )
            return _approval(rt, session, principal, row.grant.role, duration_hours, reason, origin)

    approval = await asyncio.to_thread(prepare)
    handle = rt.temporal.get_workflow_handle(jit_workflow_id(str(grant_id)))
    command = RenewInput(
        event_id=str(uuid.uuid4()),
        user=principal.username,
        user_id=principal.user_id,
        approval=approval,
        origin=origin,
    )
    await _send_update(handle.execute_update(JitAccessWorkflow.renew, command))
    await _await_submitted(rt, approval)
    return await asyncio.to_thread(load, rt, principal, grant_id)


async def revoke(
    rt: Runtime, principal: Principal, grant_id: uuid.UUID, reason: str, origin: Origin
) -> GrantRow:
    """End an elevation now: its holder, or anyone holding jit:manage."""
    problem = text_problem(reason.strip(), MAX_REASON)
    if problem is not None:
        raise RequestError(422, f"reason: {problem}", {"reason": problem})

    def precheck() -> None:
        with rt.sessions() as session:
            _require_active(visible(rt, session, principal, grant_id))

    await asyncio.to_thread(precheck)
    handle = rt.temporal.get_workflow_handle(jit_workflow_id(str(grant_id)))
    command = RevokeInput(
        user=principal.username, user_id=principal.user_id, reason=reason.strip(), origin=origin
    )
    await _send_update(handle.execute_update(JitAccessWorkflow.revoke, command))
    return await asyncio.to_thread(load, rt, principal, grant_id)


def _require_active(row: GrantRow) -> None:
    state = row.state(datetime.now(UTC))
    if state != ACTIVE:
        raise RequestError(409, f"the elevation to {row.grant.role} is {state.replace('_', ' ')}")


# --- reading -----------------------------------------------------------------------------


def _open_grant(session: Session, user_id: int, role: str) -> JitGrant | None:
    return session.execute(
        select(JitGrant).where(
            JitGrant.user_id == user_id,
            JitGrant.role == role,
            JitGrant.status.in_(OPEN_STATUSES),
        )
    ).scalar_one_or_none()


def _rows(session: Session, *conditions: Any) -> list[GrantRow]:
    holder = User.__table__.alias("holder")
    revoker = User.__table__.alias("revoker")
    rows = session.execute(
        select(JitGrant, holder.c.username, holder.c.display_name, revoker.c.username)
        .join(holder, holder.c.id == JitGrant.user_id)
        .outerjoin(revoker, revoker.c.id == JitGrant.revoked_by)
        .where(*conditions)
        .order_by(JitGrant.requested_at.desc(), JitGrant.id)
        .limit(LIST_SIZE)
    )
    return [
        GrantRow(grant, username, name, revoked_by) for grant, username, name, revoked_by in rows
    ]


def mine(session: Session, principal: Principal) -> list[GrantRow]:
    """Every elevation this person asked for, newest first (history included)."""
    return _rows(session, JitGrant.user_id == principal.user_id)


def manages(rt: Runtime, principal: Principal) -> bool:
    return bool(rt.policy.authorize(principal, MANAGE))


def everyone_active(rt: Runtime, session: Session, principal: Principal) -> list[GrantRow]:
    """Every elevation in force now (jit:manage)."""
    verdict = rt.policy.authorize(principal, MANAGE)
    if not verdict:
        raise refusal(verdict)
    return _rows(session, JitGrant.status == ACTIVE, JitGrant.expires_at > datetime.now(UTC))


def visible(rt: Runtime, session: Session, principal: Principal, grant_id: uuid.UUID) -> GrantRow:
    """The grant if it is this person's or they manage elevations; 404 otherwise."""
    found = _rows(session, JitGrant.id == grant_id)
    if not found or (found[0].grant.user_id != principal.user_id and not manages(rt, principal)):
        raise RequestError(404, "elevation not found")
    return found[0]


def load(rt: Runtime, principal: Principal, grant_id: uuid.UUID) -> GrantRow:
    with rt.sessions() as session:
        return visible(rt, session, principal, grant_id)

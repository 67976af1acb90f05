"""Just-in-time elevation: its contracts, the grant's writes, and the executor that grants.

The approval of an elevation is an ordinary `access.elevation` request run by the
ApprovalWorkflow; its "platform action" is the grant itself, made here in our own
database (never sent to the operator's platform), exactly once per request through the
`platform_changes` ledger. The JitAccessWorkflow owns the rest of the grant's life.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from temporalio import activity
from temporalio.exceptions import ApplicationError

from core import audit, platform_actions
from core.db import SessionFactory, transaction
from core.models import JitGrant, PlatformChange, User
from core.platform import PlatformGateway
from core.platform_actions import APPLY, ActionRefused
from workflows.contracts import ApprovalInput, ExecuteInput, ExecuteResult, Origin

JIT_ACTION = "access.elevation"
JIT_WORKFLOW_PREFIX = "jit-"
# What one unit of the `duration_hours` param lasts; tests shorten it to seconds.
SECONDS_PER_HOUR = 3600

PENDING = "pending"
ACTIVE = "active"
EXPIRED = "expired"
REVOKED = "revoked"
NOT_GRANTED = "not_granted"
OPEN_STATUSES = (PENDING, ACTIVE)

# kind of ending -> (grant status, audit action)
_ENDINGS = {
    EXPIRED: (EXPIRED, "jit.expired"),
    REVOKED: (REVOKED, "jit.revoked"),
    NOT_GRANTED: (NOT_GRANTED, "jit.not_granted"),
}


def jit_workflow_id(grant_id: str) -> str:
    return f"{JIT_WORKFLOW_PREFIX}{grant_id}"


def grant_stream(grant_id: str | uuid.UUID) -> str:
    return f"jit:{grant_id}"


# --- contracts ---------------------------------------------------------------------------


@dataclass(frozen=True)
class JitInput:
    grant_id: str
    event_id: str
    user_id: int
    username: str
    role: str
    reason: str
    requested_at: datetime
    approval: ApprovalInput
    origin: Origin = field(default_factory=Origin)


@dataclass(frozen=True)
class RenewInput:
    event_id: str
    user: str
    user_id: int
    approval: ApprovalInput
    origin: Origin = field(default_factory=Origin)


@dataclass(frozen=True)
class RevokeInput:
    user: str
    user_id: int
    reason: str = ""
    origin: Origin = field(default_factory=Origin)


@dataclass(frozen=True)
class AttachApproval:
    grant_id: str
    request_id: str
    event_id: str
    actor: str
    origin: Origin = field(default_factory=Origin)


@dataclass(frozen=True)
class GrantEnd:
    grant_id: str
    kind: str  # expired, revoked, not_granted
    event_id: str
    at: datetime
    actor: str = "system"
    actor_id: int | None = None
    reason: str = ""
    origin: Origin = field(default_factory=Origin)


@dataclass(frozen=True)
class SettleApproval:
    grant_id: str
    request_id: str


@dataclass
class JitState:
    grant_id: str
    status: str
    expires_at: datetime | None = None
    pending_request_id: str | None = None


# --- writes ------------------------------------------------------------------------------


def _event(
    grant: JitGrant,
    username: str,
    action: str,
    *,
    event_id: str | uuid.UUID,
    actor: str,
    at: datetime,
    origin: Origin,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
) -> audit.NewAuditEvent:
    return audit.NewAuditEvent(
        event_id=uuid.UUID(str(event_id)),
        stream=grant_stream(grant.id),
        action=action,
        target=f"user:{username}",
        actor=actor,
        actor_type="system" if actor == "system" else "user",
        channel=origin.channel,
        occurred_at=at,
        before=before,
        after=after,
        sensitivity="high",
        ip=origin.ip,
        device=origin.device,
    )


def _period(grant: JitGrant) -> dict[str, Any]:
    return {
        "role": grant.role,
        "status": grant.status,
        "granted_at": grant.granted_at.isoformat() if grant.granted_at else None,
        "expires_at": grant.expires_at.isoformat() if grant.expires_at else None,
    }


def _username(session: Session, user_id: int) -> str:
    user = session.get(User, user_id)
    return user.username if user is not None else str(user_id)


def _locked(session: Session, grant_id: str | uuid.UUID) -> JitGrant:
    grant = session.get(JitGrant, uuid.UUID(str(grant_id)), with_for_update=True)
    if grant is None:
        raise ApplicationError(f"no grant {grant_id}", type="unknown_grant", non_retryable=True)
    return grant


def grant_for_request(session: Session, command: ExecuteInput, now: datetime) -> ExecuteResult:
    """Grant (first approval) or extend (renewal) the elevation an approved request asked for.

    Exactly once per request: a retry returns the first result from the ledger.
    """
    request_id = uuid.UUID(command.request_id)
    done = session.get(PlatformChange, (request_id, APPLY))
    if done is not None:
        return ExecuteResult(before=done.before, after=done.after, summary=done.summary)
    grant = session.execute(
        select(JitGrant).where(JitGrant.request_ids.contains([request_id])).with_for_update()
    ).scalar_one_or_none()
    if grant is None:
        raise ActionRefused("an elevation is granted only when asked for from My access")
    before = _period(grant)
    duration = timedelta(seconds=int(command.params["duration_hours"]) * SECONDS_PER_HOUR)
    if grant.status == PENDING:
        grant.status, grant.granted_at, grant.expires_at = ACTIVE, now, now + duration
        verb, action = "Granted", "jit.granted"
    elif grant.status == ACTIVE and grant.expires_at is not None and grant.expires_at > now:
        grant.expires_at = max(grant.expires_at, now + duration)
        verb, action = "Renewed", "jit.renewed"
    else:
        raise ActionRefused(f"the elevation to {grant.role} has ended ({grant.status})")
    if grant.pending_request_id == request_id:
        grant.pending_request_id = None
    after = _period(grant)
    assert grant.expires_at is not None
    summary = (
        f"{verb} {grant.role} to {command.target} until {grant.expires_at:%Y-%m-%d %H:%M:%S} UTC"
    )
    audit.append(
        session,
        _event(
            grant,
            command.target,
            action,
            event_id=uuid.uuid5(request_id, action),
            actor="system",
            at=now,
            origin=Origin(channel="workflow"),
            before=before,
            after={**after, "request_id": command.request_id},
        ),
    )
    result = ExecuteResult(
        before={"id": str(grant.id), **before},
        after={"id": str(grant.id), **after},
        summary=summary,
    )
    return platform_actions.record_change(session, command, APPLY, result)


class JitGrantingPlatform:
    """The platform gateway, with elevations granted here instead of on the platform."""

    def __init__(self, platform: PlatformGateway, sessions: SessionFactory) -> None:
        self._platform = platform
        self._sessions = sessions

    def execute(self, command: ExecuteInput) -> ExecuteResult:
        if command.action != JIT_ACTION:
            return self._platform.execute(command)
        with transaction(self._sessions) as session:
            return grant_for_request(session, command, datetime.now(UTC))

    def revert(self, command: ExecuteInput) -> ExecuteResult:
        if command.action == JIT_ACTION:
            raise ActionRefused("an elevation ends by expiry or revocation, not by a revert")
        return self._platform.revert(command)


class JitActivities:
    def __init__(self, sessions: SessionFactory) -> None:
        self._sessions = sessions

    @activity.defn(name="jit_record_requested")
    def record_requested(self, grant: JitInput) -> None:
        """The pending grant and its audit event (idempotent on the grant id)."""
        try:
            with transaction(self._sessions) as session:
                if session.get(JitGrant, uuid.UUID(grant.grant_id)) is not None:
                    return
                row = JitGrant(
                    id=uuid.UUID(grant.grant_id),
                    user_id=grant.user_id,
                    role=grant.role,
                    reason=grant.reason,
                    status=PENDING,
                    requested_at=grant.requested_at,
                    request_ids=[uuid.UUID(grant.approval.request_id)],
                    pending_request_id=uuid.UUID(grant.approval.request_id),
                )
                session.add(row)
                session.flush()
                audit.append(
                    session,
                    _event(
                        row,
                        grant.username,
                        "jit.requested",
                        event_id=grant.event_id,
                        actor=grant.username,
                        at=grant.requested_at,
                        origin=grant.origin,
                        before=None,
                        after={
                            "role": grant.role,
                            "reason": grant.reason,
                            "duration_hours": grant.approval.params["duration_hours"],
                            "request_id": grant.approval.request_id,
                        },
                    ),
                )
        except IntegrityError:
            raise ApplicationError(
                f"{grant.username} already has an open elevation to {grant.role}",
                type="duplicate_request",
                non_retryable=True,
            ) from None

    @activity.defn(name="jit_attach_approval")
    def attach_approval(self, command: AttachApproval) -> None:
        """A renewal's approval now in flight for the grant (idempotent)."""
        request_id = uuid.UUID(command.request_id)
        with transaction(self._sessions) as session:
            grant = _locked(session, command.grant_id)
            if request_id in grant.request_ids:
                return
            grant.request_ids = [*grant.request_ids, request_id]
            grant.pending_request_id = request_id
            audit.append(
                session,
                _event(
                    grant,
                    _username(session, grant.user_id),
                    "jit.renewal_requested",
                    event_id=command.event_id,
                    actor=command.actor,
                    at=datetime.now(UTC),
                    origin=command.origin,
                    before=_period(grant),
                    after={"request_id": command.request_id},
                ),
            )

    @activity.defn(name="jit_settle_approval")
    def settle_approval(self, command: SettleApproval) -> None:
        """The approval ended (granted or not): the grant waits on it no more."""
        with transaction(self._sessions) as session:
            grant = _locked(session, command.grant_id)
            if grant.pending_request_id == uuid.UUID(command.request_id):
                grant.pending_request_id = None

    @activity.defn(name="jit_grant_state")
    def grant_state(self, grant_id: str) -> JitState:
        with self._sessions() as session:
            grant = session.get(JitGrant, uuid.UUID(grant_id))
            if grant is None:
                raise ApplicationError(f"no grant {grant_id}", non_retryable=True)
            return JitState(
                grant_id=grant_id,
                status=grant.status,
                expires_at=grant.expires_at,
                pending_request_id=str(grant.pending_request_id)
                if grant.pending_request_id
                else None,
            )

    @activity.defn(name="jit_end_grant")
    def end_grant(self, end: GrantEnd) -> bool:
        """Expire, revoke or close an ungranted grant, with its audit event (idempotent).

        False when a renewal has moved the expiry past this moment: nothing ends yet.
        """
        status, action = _ENDINGS[end.kind]
        with transaction(self._sessions) as session:
            grant = _locked(session, end.grant_id)
            if grant.status not in OPEN_STATUSES:
                return True
            if end.kind == EXPIRED and grant.expires_at is not None and grant.expires_at > end.at:
                return False
            before = _period(grant)
            grant.status = status
            if end.kind == REVOKED:
                grant.revoked_at, grant.revoked_by = end.at, end.actor_id
            audit.append(
                session,
                _event(
                    grant,
                    _username(session, grant.user_id),
                    action,
                    event_id=end.event_id,
                    actor=end.actor,
                    at=end.at,
                    origin=end.origin,
                    before=before,
                    after={**_period(grant), **({"reason": end.reason} if end.reason else {})},
                ),
            )
        return True

"""Delegations: an approver names a peer to decide in their place for a period.

The one path for web and API. The policy rules decide who may delegate to whom; the
delegation, its revocation and the audit event that records each are written in one
transaction. Decisions taken under a delegation name both people (core/request_service).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session

from core import audit
from core.models import Delegation, User
from core.repositories import delegations as delegations_repo
from core.repositories import users as users_repo
from core.repositories.delegations import DelegationRow
from core.request_service import RequestError, text_problem
from core.runtime import Runtime
from core.times import as_utc
from policies.rules import check_delegation, check_revoke_delegation
from policies.snapshot import Principal
from workflows.contracts import Origin

MANAGE_ALL = "delegations:manage_all"
MAX_REASON = 2000
# A start a little in the past is "now" typed slowly, not a backdated delegation.
START_GRACE = timedelta(minutes=5)
# Leave can be planned ahead, but not further than this.
FURTHEST_START = timedelta(days=365)

_STATUS_BY_CODE = {
    "self_delegation": 422,
    "too_long": 422,
    "nothing_to_delegate": 403,
    "not_a_peer": 403,
    "not_delegator": 403,
    "already_revoked": 409,
    "already_ended": 409,
}


@dataclass(frozen=True)
class NewDelegation:
    delegate: str
    ends_at: datetime
    reason: str
    starts_at: datetime | None = None
    # Someone else's approvals, for holders of delegations:manage_all (an absent director).
    delegator: str | None = None


def peers(rt: Runtime, session: Session, user: User) -> list[User]:
    """Whom this person may name as a delegate: active people of their departments."""
    return delegations_repo.peers(session, _departments(rt, session, user), user.id)


def _departments(rt: Runtime, session: Session, user: User) -> set[str]:
    principal = users_repo.principal_for(session, user)
    departments = {user.department}
    for role in principal.roles:
        definition = rt.policy.roles.roles.get(role)
        if definition is not None:
            departments.add(definition.department)
    return departments


def _approves(rt: Runtime, session: Session, user: User) -> bool:
    granted = rt.policy.permissions_of(users_repo.principal_for(session, user))
    return any(p == "*" or p.partition(":")[2] in ("approve", "*") for p in granted)


def _active_user(session: Session, username: str, field_name: str) -> User:
    user = users_repo.by_username(session, username.strip())
    if user is None or not user.is_active:
        raise RequestError(
            422, f"no active user named '{username.strip()}'", {field_name: "unknown user"}
        )
    return user


def _snapshot(row: Delegation, delegator: str, delegate: str) -> dict[str, str | None]:
    return {
        "delegator": delegator,
        "delegate": delegate,
        "starts_at": row.starts_at.isoformat(),
        "ends_at": row.ends_at.isoformat(),
        "reason": row.reason,
        "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None,
    }


def _record(
    session: Session,
    principal: Principal,
    origin: Origin,
    action: str,
    row: Delegation,
    delegator: str,
    delegate: str,
    before: dict[str, str | None] | None,
) -> None:
    audit.append_from(
        session,
        origin,
        stream=f"delegation:{row.id}",
        action=action,
        target=f"user:{delegate}",
        actor=principal.username,
        before=before,
        after=_snapshot(row, delegator, delegate),
        sensitivity="high",
    )


def create(rt: Runtime, principal: Principal, new: NewDelegation, origin: Origin) -> int:
    """Validate, store and audit a delegation; returns its id. Raises RequestError."""
    problem = text_problem(new.reason, MAX_REASON)
    if problem or not new.reason.strip():
        raise RequestError(
            422, f"reason: {problem or 'say why'}", {"reason": problem or "required"}
        )
    now = datetime.now(UTC)
    starts_at = as_utc(new.starts_at) if new.starts_at else now
    ends_at = as_utc(new.ends_at)
    if starts_at < now - START_GRACE:
        raise RequestError(422, "a delegation cannot start in the past", {"starts_at": "past"})
    if starts_at > now + FURTHEST_START:
        raise RequestError(
            422, "a delegation can start at most a year from now", {"starts_at": "too far"}
        )
    if ends_at <= starts_at:
        raise RequestError(422, "the end must come after the start", {"ends_at": "before start"})
    with rt.sessions() as session:
        acting_for_other = bool(new.delegator) and new.delegator != principal.username
        if acting_for_other and not rt.policy.authorize(principal, MANAGE_ALL):
            raise RequestError(403, "you may only delegate your own approvals")
        delegator = (
            _active_user(session, new.delegator or "", "delegator")
            if acting_for_other
            else session.get(User, principal.user_id)
        )
        assert delegator is not None
        delegate = _active_user(session, new.delegate, "delegate")
        verdict = check_delegation(
            delegator=delegator.username,
            delegator_departments=_departments(rt, session, delegator),
            delegator_approves=_approves(rt, session, delegator),
            delegate=delegate.username,
            delegate_departments=_departments(rt, session, delegate),
            days=(ends_at - starts_at).total_seconds() / 86400,
        )
        if not verdict:
            raise RequestError(_STATUS_BY_CODE.get(verdict.code, 403), verdict.reason)
        delegations_repo.lock_people(session, delegator.id, delegate.id)
        clash = delegations_repo.overlapping(session, delegator.id, starts_at, ends_at)
        if clash is not None:
            raise RequestError(
                409,
                f"{delegator.username} already has a delegation from "
                f"{clash.starts_at:%Y-%m-%d %H:%M} to {clash.ends_at:%Y-%m-%d %H:%M} UTC; "
                "revoke it first",
            )
        away = delegations_repo.overlapping(session, delegate.id, starts_at, ends_at)
        if away is not None:
            raise RequestError(
                409,
                f"{delegate.username} has handed over their own approvals for part of that "
                "period; choose someone who is present",
                {"delegate": "away"},
            )
        row = Delegation(
            delegator_id=delegator.id,
            delegate_id=delegate.id,
            starts_at=starts_at,
            ends_at=ends_at,
            reason=new.reason.strip(),
            created_at=now,
        )
        session.add(row)
        session.flush()
        _record(
            session,
            principal,
            origin,
            "delegation.created",
            row,
            delegator.username,
            delegate.username,
            None,
        )
        created_id = row.id
        session.commit()
        return created_id


def visible(
    rt: Runtime, session: Session, principal: Principal, delegation_id: int
) -> DelegationRow:
    """A delegation the person gave, received, or may manage; 404 otherwise."""
    found = delegations_repo.get(session, delegation_id)
    if found is None or (
        principal.username not in (found.delegator, found.delegate)
        and not rt.policy.authorize(principal, MANAGE_ALL)
    ):
        raise RequestError(404, "delegation not found")
    return found


def revoke(rt: Runtime, principal: Principal, delegation_id: int, origin: Origin) -> None:
    """End a delegation now (or cancel a scheduled one); recorded in the audit trail."""
    now = datetime.now(UTC)
    with rt.sessions() as session:
        found = visible(rt, session, principal, delegation_id)
        row = delegations_repo.lock(session, delegation_id)
        assert row is not None
        verdict = check_revoke_delegation(
            user=principal.username,
            delegator=found.delegator,
            manages_all=bool(rt.policy.authorize(principal, MANAGE_ALL)),
            revoked=row.revoked_at is not None,
            ended=row.ends_at <= now,
        )
        if not verdict:
            raise RequestError(_STATUS_BY_CODE.get(verdict.code, 403), verdict.reason)
        before = _snapshot(row, found.delegator, found.delegate)
        row.revoked_at = now
        _record(
            session,
            principal,
            origin,
            "delegation.revoked",
            row,
            found.delegator,
            found.delegate,
            before,
        )
        session.commit()


def listing(
    rt: Runtime,
    session: Session,
    principal: Principal,
    *,
    everyone: bool,
    before_id: int | None,
    limit: int,
) -> list[DelegationRow]:
    """The person's delegations (given and received), or all of them for a manager."""
    if everyone and not rt.policy.authorize(principal, MANAGE_ALL):
        raise RequestError(403, "listing everyone's delegations needs delegations:manage_all")
    return delegations_repo.page(
        session, user_id=None if everyone else principal.user_id, before_id=before_id, limit=limit
    )

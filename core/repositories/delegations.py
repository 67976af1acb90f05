"""Delegations of approvals: who stands in for whom, and when."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Select, func, or_, select
from sqlalchemy.orm import Session, aliased

from core.models import Delegation, User, UserRole


@dataclass(frozen=True)
class ActiveDelegation:
    id: int
    delegator_id: int
    delegator_username: str
    delegator_display_name: str
    delegator_roles: frozenset[str]
    ends_at: datetime


def active_for_delegate(
    session: Session, delegate_id: int, now: datetime
) -> list[ActiveDelegation]:
    """Delegations in force for this delegate at `now` (started, not ended, not revoked)."""
    rows = session.execute(
        select(Delegation, User)
        .join(User, User.id == Delegation.delegator_id)
        .where(
            Delegation.delegate_id == delegate_id,
            Delegation.starts_at <= now,
            Delegation.ends_at > now,
            Delegation.revoked_at.is_(None),
            User.is_active.is_(True),
        )
        .order_by(Delegation.ends_at)
    ).all()
    result = []
    for delegation, delegator in rows:
        roles = session.execute(
            select(UserRole.role).where(UserRole.user_id == delegator.id)
        ).scalars()
        result.append(
            ActiveDelegation(
                id=delegation.id,
                delegator_id=delegator.id,
                delegator_username=delegator.username,
                delegator_display_name=delegator.display_name,
                delegator_roles=frozenset(roles),
                ends_at=delegation.ends_at,
            )
        )
    return result


# First key of the advisory locks taken on a person's delegations (the second is their id).
DELEGATION_LOCK_SPACE = 0x44454C  # "DEL"

DelegationState = Literal["scheduled", "active", "ended", "revoked"]


@dataclass(frozen=True)
class DelegationRow:
    delegation: Delegation
    delegator: str
    delegator_name: str
    delegate: str
    delegate_name: str

    def state(self, now: datetime) -> DelegationState:
        """In words: scheduled, active, ended or revoked."""
        if self.delegation.revoked_at is not None:
            return "revoked"
        if self.delegation.ends_at <= now:
            return "ended"
        return "active" if self.delegation.starts_at <= now else "scheduled"


def _rows(session: Session, stmt: Select[Any]) -> list[DelegationRow]:
    delegator, delegate = aliased(User), aliased(User)
    joined = (
        stmt.add_columns(
            delegator.username, delegator.display_name, delegate.username, delegate.display_name
        )
        .join(delegator, delegator.id == Delegation.delegator_id)
        .join(delegate, delegate.id == Delegation.delegate_id)
    )
    return [DelegationRow(*row) for row in session.execute(joined)]


def page(
    session: Session, *, user_id: int | None, before_id: int | None, limit: int
) -> list[DelegationRow]:
    """Newest first; those given or received by `user_id`, or every one when it is None."""
    stmt = select(Delegation).order_by(Delegation.id.desc()).limit(limit)
    if user_id is not None:
        stmt = stmt.where(
            or_(Delegation.delegator_id == user_id, Delegation.delegate_id == user_id)
        )
    if before_id is not None:
        stmt = stmt.where(Delegation.id < before_id)
    return _rows(session, stmt)


def get(session: Session, delegation_id: int) -> DelegationRow | None:
    found = _rows(session, select(Delegation).where(Delegation.id == delegation_id))
    return found[0] if found else None


def lock(session: Session, delegation_id: int) -> Delegation | None:
    return session.execute(
        select(Delegation).where(Delegation.id == delegation_id).with_for_update()
    ).scalar_one_or_none()


def lock_people(session: Session, *user_ids: int) -> None:
    """Serialise changes to these people's delegations until the transaction ends (ids in
    order, so two transactions locking the same pair cannot deadlock)."""
    for user_id in sorted(set(user_ids)):
        session.execute(select(func.pg_advisory_xact_lock(DELEGATION_LOCK_SPACE, user_id)))


def overlapping(
    session: Session, delegator_id: int, starts_at: datetime, ends_at: datetime
) -> Delegation | None:
    """A delegation by this person, not revoked, whose period overlaps the given one."""
    return (
        session.execute(
            select(Delegation)
            .where(
                Delegation.delegator_id == delegator_id,
                Delegation.revoked_at.is_(None),
                Delegation.starts_at < ends_at,
                Delegation.ends_at > starts_at,
            )
            .order_by(Delegation.starts_at)
            .limit(1)
        )
        .scalars()
        .first()
    )


def peers(session: Session, departments: set[str], exclude_user_id: int) -> list[User]:
    """Active people of these departments: who one may name as a delegate."""
    return list(
        session.execute(
            select(User)
            .where(
                User.department.in_(sorted(departments)),
                User.is_active.is_(True),
                User.id != exclude_user_id,
            )
            .order_by(User.display_name)
        ).scalars()
    )

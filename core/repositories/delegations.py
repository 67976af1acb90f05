"""Delegations of approvals: who stands in for whom, and when."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

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

"""Refused access is a security event: who asked for what, and why it was refused.

When the person held a just-in-time role that would have allowed it and the grant has
ended, the event names that grant: an expired elevation being used is exactly what an
investigator looks for.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from core.auth import security_event
from core.models import JitGrant
from core.runtime import Runtime
from policies.snapshot import Principal
from workflows.contracts import Origin

ENDED_GRANTS = ("expired", "revoked")


def _lapsed_grant(
    session: Session, rt: Runtime, principal: Principal, permission: str
) -> dict[str, Any]:
    now = datetime.now(UTC)
    grants = session.execute(
        select(JitGrant)
        .where(
            JitGrant.user_id == principal.user_id,
            or_(JitGrant.status.in_(ENDED_GRANTS), JitGrant.expires_at <= now),
        )
        .order_by(JitGrant.expires_at.desc().nulls_last())
        .limit(20)
    ).scalars()
    for grant in grants:
        as_granted = Principal(principal.user_id, principal.username, frozenset([grant.role]))
        if grant.granted_at is not None and rt.policy.authorize(as_granted, permission):
            ended = grant.revoked_at or grant.expires_at
            return {
                "lapsed_grant": str(grant.id),
                "lapsed_role": grant.role,
                "grant_ended_at": ended.isoformat() if ended else None,
            }
    return {}


def record_denial(
    rt: Runtime, principal: Principal, permission: str, reason: str, origin: Origin
) -> None:
    with rt.sessions() as session:
        details: dict[str, object] = {"permission": permission, "reason": reason}
        details.update(_lapsed_grant(session, rt, principal, permission))
        security_event(session, "access.denied", principal.username, origin, details)
        session.commit()

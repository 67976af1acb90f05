"""A refused permission is recorded as a security event, naming any lapsed elevation."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from core.db import transaction
from core.models import AuditEvent, JitGrant
from core.repositories import users as users_repo


def denials_of(sessions, username: str) -> list[AuditEvent]:
    with sessions() as session:
        return list(
            session.execute(
                select(AuditEvent)
                .where(
                    AuditEvent.stream == f"user:{username}",
                    AuditEvent.action == "access.denied",
                )
                .order_by(AuditEvent.seq)
            ).scalars()
        )


async def test_a_refused_permission_is_a_security_event(api, tokens, sessions, make_user):
    analyst = make_user(("risk.analyst",), "risk-fraud", "risk")
    refused = await api.get("/api/v1/roles", headers=await tokens.headers(analyst))
    assert refused.status_code == 403
    [event] = denials_of(sessions, analyst)
    assert event.sensitivity == "security"
    after = event.after
    assert after is not None and set(after) == {"permission", "reason"}
    assert after["permission"] == "roles:view" and "roles:view" in after["reason"]


async def test_using_an_expired_elevation_is_refused_and_names_the_grant(
    api, tokens, sessions, make_user
):
    analyst = make_user(("risk.analyst",), "risk-fraud", "risk")
    now = datetime.now(UTC)
    grant_id = uuid.uuid4()
    with transaction(sessions) as session:
        user = users_repo.by_username(session, analyst)
        assert user is not None
        session.add(
            JitGrant(
                id=grant_id,
                user_id=user.id,
                role="compliance.officer",  # holds roles:view
                reason="audit week",
                status="active",  # the revoking timer is late: only the clock says it ended
                requested_at=now - timedelta(hours=3),
                granted_at=now - timedelta(hours=2),
                expires_at=now - timedelta(minutes=1),
                request_ids=[],
            )
        )
    refused = await api.get("/api/v1/roles", headers=await tokens.headers(analyst))
    assert refused.status_code == 403
    [event] = denials_of(sessions, analyst)
    after = event.after
    assert after is not None
    assert after["lapsed_grant"] == str(grant_id)
    assert after["lapsed_role"] == "compliance.officer"

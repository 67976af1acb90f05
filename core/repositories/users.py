"""Users, their roles, browser sessions and refresh tokens."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from core.models import JitGrant, RefreshToken, User, UserRole, WebSession
from policies.engine import PolicyEngine
from policies.snapshot import Principal


def by_username(session: Session, username: str) -> User | None:
    return session.execute(select(User).where(User.username == username)).scalar_one_or_none()


def by_id(session: Session, user_id: int) -> User | None:
    return session.get(User, user_id)


def roles_of(session: Session, user_id: int) -> frozenset[str]:
    rows = session.execute(select(UserRole.role).where(UserRole.user_id == user_id)).scalars()
    return frozenset(rows)


def active_jit_roles(session: Session, user_id: int) -> frozenset[str]:
    """Roles of just-in-time grants in force now: an expired one counts for nothing even
    while its revoking timer is late."""
    rows = session.execute(
        select(JitGrant.role).where(
            JitGrant.user_id == user_id,
            JitGrant.status == "active",
            JitGrant.revoked_at.is_(None),
            JitGrant.expires_at > func.now(),
        )
    ).scalars()
    return frozenset(rows)


def principal_for(
    session: Session,
    user: User,
    policy: PolicyEngine | None = None,
    mfa_checked_at: datetime | None = None,
) -> Principal:
    """The user as the policy engine sees them (their roles and just-in-time grants in
    force); with `policy`, carrying their merged scope; `mfa_checked_at`: when the sign-in
    acting proved its second factor."""
    roles = roles_of(session, user.id) | active_jit_roles(session, user.id)
    principal = Principal(
        user_id=user.id, username=user.username, roles=roles, mfa_checked_at=mfa_checked_at
    )
    if policy is None:
        return principal
    return replace(principal, scope=policy.scope_of(principal))


def usernames(session: Session, user_ids: Iterable[int]) -> dict[int, str]:
    ids = set(user_ids)
    if not ids:
        return {}
    rows = session.execute(select(User.id, User.username).where(User.id.in_(ids)))
    return {row.id: row.username for row in rows}


def create(
    session: Session,
    *,
    username: str,
    display_name: str,
    department: str,
    password_hash: str,
    roles: Iterable[str],
    team: str | None = None,
) -> User:
    user = User(
        username=username,
        display_name=display_name,
        department=department,
        team=team,
        password_hash=password_hash,
        is_active=True,
    )
    session.add(user)
    session.flush()
    session.add_all(UserRole(user_id=user.id, role=role) for role in roles)
    session.flush()
    return user


def set_password_hash(session: Session, user: User, password_hash: str) -> None:
    user.password_hash = password_hash


# --- browser sessions ----------------------------------------------------------------


def add_web_session(session: Session, web_session: WebSession) -> None:
    session.add(web_session)
    session.flush()


def live_web_session(session: Session, token_hash: str, now: datetime) -> WebSession | None:
    return session.execute(
        select(WebSession).where(
            WebSession.token_hash == token_hash,
            WebSession.revoked_at.is_(None),
            WebSession.expires_at > now,
        )
    ).scalar_one_or_none()


def revoke_web_session(session: Session, token_hash: str, now: datetime) -> None:
    session.execute(
        update(WebSession)
        .where(WebSession.token_hash == token_hash, WebSession.revoked_at.is_(None))
        .values(revoked_at=now)
    )


# --- refresh tokens ------------------------------------------------------------------


def add_refresh_token(session: Session, token: RefreshToken) -> None:
    session.add(token)
    session.flush()


def refresh_token_for_update(session: Session, jti: str) -> RefreshToken | None:
    return session.execute(
        select(RefreshToken).where(RefreshToken.jti == jti).with_for_update()
    ).scalar_one_or_none()


def revoke_token_family(session: Session, family_id: str, now: datetime) -> None:
    session.execute(
        update(RefreshToken)
        .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )

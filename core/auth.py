"""Login, token issue and rotation, browser sessions. Every outcome is audited."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session

from core import audit
from core.models import RefreshToken, User, WebSession
from core.repositories import users as users_repo
from core.security import (
    ACCESS,
    REFRESH,
    InvalidToken,
    decode_token,
    encode_token,
    new_token,
    token_digest,
    verify_password,
)
from core.settings import Settings
from workflows.contracts import Origin


class AuthError(Exception):
    """Authentication failed; the message is safe to show."""


def _security_event(
    session: Session, action: str, username: str, origin: Origin, after: dict[str, object]
) -> None:
    audit.append(
        session,
        audit.NewAuditEvent(
            event_id=uuid.uuid4(),
            stream=f"user:{username}",
            action=action,
            target=f"user:{username}",
            actor=username,
            actor_type="user",
            channel=origin.channel,
            ip=origin.ip,
            device=origin.device,
            after=after,
            sensitivity="security",
        ),
    )


def authenticate(session: Session, username: str, password: str, origin: Origin) -> User:
    """Check the password; a failure is audited and raises without saying which part was wrong."""
    if not username.isprintable():  # also keeps NUL, which PostgreSQL refuses, out of queries
        raise AuthError("wrong username or password")
    user = users_repo.by_username(session, username)
    ok = verify_password(user.password_hash if user else None, password)
    if user is None or not ok or not user.is_active:
        if user is not None:
            _security_event(
                session, "auth.login_failed", user.username, origin, {"reason": "password"}
            )
        raise AuthError("wrong username or password")
    _security_event(session, "auth.login", user.username, origin, {"channel": origin.channel})
    return user


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int


def issue_tokens(
    session: Session, settings: Settings, user: User, family: str | None = None
) -> TokenPair:
    key = settings.secret_key.get_secret_value()
    lifetime = timedelta(minutes=settings.access_token_minutes)
    access, _ = encode_token(key, user_id=user.id, token_type=ACCESS, lifetime=lifetime)
    refresh, claims = encode_token(
        key,
        user_id=user.id,
        token_type=REFRESH,
        lifetime=timedelta(days=settings.refresh_token_days),
        family=family or secrets.token_hex(16),
    )
    assert claims.family is not None
    users_repo.add_refresh_token(
        session,
        RefreshToken(
            jti=claims.jti,
            family_id=claims.family,
            user_id=user.id,
            expires_at=claims.expires_at,
        ),
    )
    return TokenPair(access, refresh, int(lifetime.total_seconds()))


def rotate_refresh_token(
    session: Session, settings: Settings, token: str, origin: Origin
) -> TokenPair:
    """Trade a refresh token for a new pair. Presenting a used one revokes its whole family."""
    try:
        claims = decode_token(settings.secret_key.get_secret_value(), token, REFRESH)
    except InvalidToken as exc:
        raise AuthError("invalid refresh token") from exc
    stored = users_repo.refresh_token_for_update(session, claims.jti)
    user = users_repo.by_id(session, claims.user_id)
    if stored is None or user is None or not user.is_active or stored.revoked_at is not None:
        raise AuthError("invalid refresh token")
    now = datetime.now(UTC)
    if stored.used_at is not None:
        users_repo.revoke_token_family(session, stored.family_id, now)
        _security_event(
            session, "auth.refresh_reuse", user.username, origin, {"family": stored.family_id}
        )
        raise AuthError("refresh token already used; every session of this login is revoked")
    stored.used_at = now
    return issue_tokens(session, settings, user, family=stored.family_id)


def user_from_access_token(session: Session, settings: Settings, token: str) -> User:
    try:
        claims = decode_token(settings.secret_key.get_secret_value(), token, ACCESS)
    except InvalidToken as exc:
        raise AuthError("invalid or expired token") from exc
    user = users_repo.by_id(session, claims.user_id)
    if user is None or not user.is_active:
        raise AuthError("invalid or expired token")
    return user


# --- browser sessions ----------------------------------------------------------------


@dataclass(frozen=True)
class NewWebSession:
    cookie_value: str
    csrf_token: str
    expires_at: datetime


def open_web_session(
    session: Session, settings: Settings, user: User, origin: Origin
) -> NewWebSession:
    cookie_value = new_token()
    csrf = new_token()
    expires_at = datetime.now(UTC) + timedelta(hours=settings.session_hours)
    users_repo.add_web_session(
        session,
        WebSession(
            token_hash=token_digest(cookie_value),
            user_id=user.id,
            csrf_token=csrf,
            ip=origin.ip,
            user_agent=(origin.device or "")[:256] or None,
            expires_at=expires_at,
        ),
    )
    return NewWebSession(cookie_value, csrf, expires_at)


def resolve_web_session(session: Session, cookie_value: str) -> tuple[User, WebSession] | None:
    web_session = users_repo.live_web_session(
        session, token_digest(cookie_value), datetime.now(UTC)
    )
    if web_session is None:
        return None
    user = users_repo.by_id(session, web_session.user_id)
    if user is None or not user.is_active:
        return None
    return user, web_session


def close_web_session(session: Session, cookie_value: str, username: str, origin: Origin) -> None:
    users_repo.revoke_web_session(session, token_digest(cookie_value), datetime.now(UTC))
    _security_event(session, "auth.logout", username, origin, {})

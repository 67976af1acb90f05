"""Browser sessions as people see them, and failed sign-ins (lockout and throttling)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.orm import Session

from core.models import MAX_USERNAME, LoginAttempt, RefreshToken, User, WebSession
from core.security import address_block


@dataclass(frozen=True)
class SessionRow:
    session: WebSession
    username: str
    display_name: str


def live_condition(now: datetime) -> ColumnElement[bool]:
    return (WebSession.revoked_at.is_(None)) & (WebSession.expires_at > now)


def live_sessions(
    session: Session, now: datetime, *, user_id: int | None = None, limit: int = 200
) -> list[SessionRow]:
    """Sessions not revoked nor past their absolute end, newest first (one user's or all)."""
    query = (
        select(WebSession, User.username, User.display_name)
        .join(User, User.id == WebSession.user_id)
        .where(live_condition(now))
        .order_by(WebSession.created_at.desc(), WebSession.id.desc())
        .limit(limit)
    )
    if user_id is not None:
        query = query.where(WebSession.user_id == user_id)
    return [SessionRow(row[0], row[1], row[2]) for row in session.execute(query)]


def active_sessions_oldest_first(session: Session, user_id: int, now: datetime) -> list[WebSession]:
    """A user's fully signed-in live sessions, locked, oldest first (the concurrency limit)."""
    return list(
        session.execute(
            select(WebSession)
            .where(
                WebSession.user_id == user_id,
                WebSession.stage == "active",
                live_condition(now),
            )
            .order_by(WebSession.created_at, WebSession.id)
            .with_for_update()
        ).scalars()
    )


def by_public_id(session: Session, session_id: int) -> WebSession | None:
    return session.execute(
        select(WebSession).where(WebSession.id == session_id).with_for_update()
    ).scalar_one_or_none()


def by_token_hash(session: Session, token_hash: str) -> WebSession | None:
    return session.get(WebSession, token_hash)


def live_sessions_of(session: Session, user_id: int, now: datetime) -> list[WebSession]:
    """All of a user's live sessions at any stage, locked."""
    return list(
        session.execute(
            select(WebSession)
            .where(WebSession.user_id == user_id, live_condition(now))
            .order_by(WebSession.created_at, WebSession.id)
            .with_for_update()
        ).scalars()
    )


# --- refresh-token families ------------------------------------------------------------


def family_started_at(session: Session, family_id: str) -> datetime | None:
    """When a family's first token was issued (used tokens are kept, so it is still there)."""
    return session.execute(
        select(func.min(RefreshToken.created_at)).where(RefreshToken.family_id == family_id)
    ).scalar_one_or_none()


def revoke_refresh_tokens_of(session: Session, user_id: int, now: datetime) -> int:
    """Revoke every unexpired refresh token of a user (all families); returns the families."""
    revoked = session.execute(
        update(RefreshToken)
        .where(
            RefreshToken.user_id == user_id,
            RefreshToken.revoked_at.is_(None),
            RefreshToken.expires_at > now,
        )
        .values(revoked_at=now)
        .returning(RefreshToken.family_id)
    ).scalars()
    return len(set(revoked))


# --- failed sign-ins -------------------------------------------------------------------


def failure_key(username: str) -> str:
    """Failures count per username whatever its case: directories match names without
    case, so "Alice" and "ALICE" are one account's guesses."""
    return username.casefold()[:MAX_USERNAME]


def add_failure(
    session: Session, username: str, ip: str | None, reason: str, now: datetime
) -> None:
    session.add(
        LoginAttempt(
            username=failure_key(username),
            ip=ip,
            ip_block=address_block(ip) if ip is not None else None,
            reason=reason,
            occurred_at=now,
        )
    )
    session.flush()


def recent_failures_of(
    session: Session, username: str, since: datetime, limit: int
) -> list[datetime]:
    """Uncleared failures of a username since `since`, newest first."""
    return list(
        session.execute(
            select(LoginAttempt.occurred_at)
            .where(
                LoginAttempt.username == failure_key(username),
                LoginAttempt.cleared_at.is_(None),
                LoginAttempt.occurred_at > since,
            )
            .order_by(LoginAttempt.occurred_at.desc())
            .limit(limit)
        ).scalars()
    )


def failures_from_ip(session: Session, ip: str, since: datetime) -> tuple[int, datetime | None]:
    """How many failures came from this address (an IPv6 one: from its /64) since `since`,
    and the oldest of them."""
    count, oldest = session.execute(
        select(func.count(), func.min(LoginAttempt.occurred_at)).where(
            LoginAttempt.ip_block == address_block(ip), LoginAttempt.occurred_at > since
        )
    ).one()
    return int(count), oldest


def clear_failures(session: Session, username: str, now: datetime) -> int:
    result = session.execute(
        update(LoginAttempt)
        .where(LoginAttempt.username == failure_key(username), LoginAttempt.cleared_at.is_(None))
        .values(cleared_at=now)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def usernames_with_failures(session: Session, since: datetime) -> list[tuple[str, int]]:
    """Usernames with uncleared failures since `since` and how many, most first."""
    rows = session.execute(
        select(LoginAttempt.username, func.count())
        .where(LoginAttempt.cleared_at.is_(None), LoginAttempt.occurred_at > since)
        .group_by(LoginAttempt.username)
        .order_by(func.count().desc(), LoginAttempt.username)
        .limit(200)
    )
    return [(row[0], int(row[1])) for row in rows]

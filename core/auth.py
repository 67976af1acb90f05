"""Login, MFA, token issue and rotation, browser sessions, lockout. Every outcome is audited."""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Protocol

import pyotp
import segno
from cryptography.fernet import Fernet
from cryptography.fernet import InvalidToken as FernetInvalidToken
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core import audit
from core.models import RefreshToken, User, WebSession
from core.repositories import sessions as sessions_repo
from core.repositories import users as users_repo
from core.security import (
    ACCESS,
    REFRESH,
    InvalidToken,
    TokenClaims,
    decode_token,
    encode_token,
    new_token,
    token_digest,
    verify_password,
)
from core.settings import Settings
from policies.engine import PolicyEngine
from policies.snapshot import Principal
from workflows.contracts import Origin

if TYPE_CHECKING:
    from core.identity import ExternalPerson

ACTIVE = "active"
AWAITING_CODE = "mfa"
MUST_ENROL = "enrol"
# A session's last-use time is written at most this often (not on every page view).
TOUCH_EVERY = timedelta(seconds=60)


class AuthError(Exception):
    """Authentication failed; the message is safe to show."""


class LoginThrottled(AuthError):
    """Too many failures for this username or from this address; retry after some seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = max(1, retry_after)


class StepUpRequired(AuthError):
    """A high-risk action needs a recent authenticator code."""


class AccessRefused(AuthError):
    """The person proved who they are, but nothing lets them in (no mapped group)."""


LOCAL = "local"


class DirectoryIncident(AuthError):
    """The directory could not say whether the password is right (down, misconfigured,
    ambiguous): recorded as a security event, never counted as the person's failure."""

    action = "auth.directory_unavailable"

    def __init__(self, message: str, details: dict[str, object]) -> None:
        super().__init__(message)
        self.details = details


class ExternalDirectory(Protocol):
    """Checks the passwords of its own people (LDAP, core/identity.py) and provisions them."""

    source: str

    def check_password(self, username: str, password: str) -> ExternalPerson | None:
        """Who the directory vouches for; None for wrong credentials; AuthError (a
        DirectoryIncident when it cannot tell) for anything else. Network only: it is
        called with no database transaction open."""
        ...

    def provision(self, session: Session, person: ExternalPerson, origin: Origin) -> User:
        """The local user for the person, in the caller's transaction."""
        ...


def security_event(
    session: Session,
    action: str,
    username: str,
    origin: Origin,
    after: dict[str, object],
    actor: str | None = None,
    before: dict[str, object] | None = None,
) -> None:
    audit.append_security_event(
        session,
        stream=f"user:{username}",
        action=action,
        target=f"user:{username}",
        actor=actor or username,
        actor_type="system" if actor == "system" else "user",
        origin=origin,
        before=before,
        after=after,
    )


# --- lockout and throttling ------------------------------------------------------------

# First key of the advisory lock that queues one username's sign-ins ("SIG").
SIGN_IN_LOCK_SPACE = 0x534947
SIX_ASCII_DIGITS = re.compile(r"[0-9]{6}")


def _minutes(seconds: int) -> str:
    minutes = math.ceil(seconds / 60)
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


def locked_until(
    session: Session, settings: Settings, username: str, now: datetime
) -> datetime | None:
    """When a username's lock ends: N uncleared failures within the window lock it from the last."""
    window = timedelta(minutes=settings.login_window_minutes)
    lockout = timedelta(minutes=settings.login_lockout_minutes)
    limit = settings.login_max_failures
    failures = sessions_repo.recent_failures_of(session, username, now - window - lockout, limit)
    if len(failures) < limit or failures[0] - failures[-1] > window:
        return None
    until = failures[0] + lockout
    return until if until > now else None


def _refuse_if_throttled(
    session: Session, settings: Settings, username: str, origin: Origin
) -> None:
    """Refuse a throttled username or address. Sign-ins of one username queue behind each
    other from here to the end of the caller's transaction, so parallel guesses are all
    counted before the next one is checked."""
    key = sessions_repo.failure_key(username)
    session.execute(select(func.pg_advisory_xact_lock(SIGN_IN_LOCK_SPACE, func.hashtext(key))))
    now = datetime.now(UTC)
    until = locked_until(session, settings, username, now)
    if until is not None:
        seconds = int((until - now).total_seconds()) + 1
        raise LoginThrottled(
            f"too many failed sign-ins for this account; try again in {_minutes(seconds)}",
            seconds,
        )
    if origin.ip is None:
        return
    window = timedelta(minutes=settings.login_window_minutes)
    count, oldest = sessions_repo.failures_from_ip(session, origin.ip, now - window)
    if count >= settings.login_ip_max_failures and oldest is not None:
        seconds = int((oldest + window - now).total_seconds()) + 1
        raise LoginThrottled(
            f"too many failed sign-ins from your address; try again in {_minutes(seconds)}",
            seconds,
        )


def _record_failure(
    session: Session,
    settings: Settings,
    username: str,
    user: User | None,
    origin: Origin,
    reason: str,
) -> None:
    """Keep the failure (audited for a real user); the one that reaches the limit locks."""
    now = datetime.now(UTC)
    sessions_repo.add_failure(session, username, origin.ip, reason, now)
    if user is not None:
        action = "auth.mfa_failed" if reason.startswith("mfa") else "auth.login_failed"
        security_event(session, action, user.username, origin, {"reason": reason})
    until = locked_until(session, settings, username, now)
    if until is None:
        return
    if user is not None:
        security_event(
            session,
            "auth.lockout",
            user.username,
            origin,
            {"until": until.isoformat(), "failures": settings.login_max_failures},
        )
    seconds = int((until - now).total_seconds()) + 1
    raise LoginThrottled(
        f"too many failed sign-ins: this account is locked for {_minutes(seconds)}", seconds
    )


def unlock(session: Session, username: str, actor: str, origin: Origin) -> int:
    """An administrator clears a username's failures (and so its lock). Returns how many."""
    cleared = sessions_repo.clear_failures(session, username, datetime.now(UTC))
    if cleared and users_repo.by_username(session, username) is not None:
        security_event(session, "auth.unlock", username, origin, {"cleared": cleared}, actor)
    return cleared


def failing_usernames(
    session: Session, settings: Settings
) -> list[tuple[str, int, datetime | None]]:
    """Usernames with recent failures: how many, and until when each is locked (if it is)."""
    now = datetime.now(UTC)
    since = now - timedelta(minutes=settings.login_window_minutes + settings.login_lockout_minutes)
    return [
        (name, count, locked_until(session, settings, name, now))
        for name, count in sessions_repo.usernames_with_failures(session, since)
    ]


# --- TOTP ------------------------------------------------------------------------------


def _fernet(settings: Settings) -> Fernet:
    # Domain-separated from the JWT key; rotating SECRET_KEY means re-enrolling MFA.
    digest = hashlib.sha256(b"mfa-secret:" + settings.secret_key.get_secret_value().encode())
    return Fernet(base64.urlsafe_b64encode(digest.digest()))


def _seal(settings: Settings, secret: str) -> str:
    return _fernet(settings).encrypt(secret.encode()).decode()


def _unseal(settings: Settings, sealed: str) -> str:
    try:
        return _fernet(settings).decrypt(sealed.encode()).decode()
    except FernetInvalidToken:
        raise AuthError("the authenticator secret cannot be read; enrol again") from None


def mfa_enrolled(user: User) -> bool:
    return user.mfa_enabled_at is not None and user.mfa_secret is not None


def mfa_required(policy: PolicyEngine, roles: Iterable[str]) -> bool:
    defined = policy.roles.roles
    return any(defined[role].mfa_required for role in roles if role in defined)


def _matching_step(secret: str, code: str, now: datetime, last_step: int | None) -> int | None:
    """The time step a code belongs to (one step of clock drift either way), if not used yet."""
    code = code.strip().replace(" ", "")
    if not SIX_ASCII_DIGITS.fullmatch(code):  # str.isdigit() also accepts "١٢٣٤٥٦"
        return None
    totp = pyotp.TOTP(secret)
    current = totp.timecode(now)
    for step in (current - 1, current, current + 1):
        if last_step is not None and step <= last_step:
            continue  # a code is good once: a replayed one is refused
        if hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


def verify_code(
    session: Session, settings: Settings, user: User, code: str, origin: Origin, purpose: str
) -> None:
    """Check an authenticator code against the user's secret; a failure counts toward lockout."""
    _refuse_if_throttled(session, settings, user.username, origin)
    session.refresh(user, with_for_update=True)  # two requests with one code: one wins
    if user.mfa_secret is None:
        raise AuthError("multi-factor authentication is not set up")
    now = datetime.now(UTC)
    step = _matching_step(_unseal(settings, user.mfa_secret), code, now, user.mfa_last_step)
    if step is None:
        _record_failure(session, settings, user.username, user, origin, f"mfa:{purpose}")
        raise AuthError("wrong or already used authenticator code")
    user.mfa_last_step = step
    user.mfa_verified_at = now


@dataclass(frozen=True)
class Enrolment:
    secret: str
    uri: str
    qr_svg: str


def begin_enrolment(session: Session, settings: Settings, user: User) -> Enrolment:
    """A new secret, shown once as a QR code and text; MFA is on only after a code confirms it."""
    if mfa_enrolled(user):
        raise AuthError("multi-factor authentication is already set up")
    secret = pyotp.random_base32()
    user.mfa_secret = _seal(settings, secret)
    user.mfa_last_step = None
    uri = pyotp.TOTP(secret).provisioning_uri(name=user.username, issuer_name=settings.mfa_issuer)
    svg = segno.make(uri, error="m").svg_inline(scale=5, title="Authenticator QR code")
    return Enrolment(secret, uri, svg)


def confirm_enrolment(
    session: Session,
    settings: Settings,
    user: User,
    code: str,
    origin: Origin,
    current: WebSession | None = None,
) -> None:
    """MFA is on; every other sign-in (made with the password alone) ends, except `current`."""
    if mfa_enrolled(user):
        raise AuthError("multi-factor authentication is already set up")
    if user.mfa_secret is None:
        raise AuthError("start the set-up again: no pending authenticator secret")
    verify_code(session, settings, user, code, origin, "enrolment")
    user.mfa_enabled_at = datetime.now(UTC)
    if current is not None:
        current.mfa_verified_at = user.mfa_verified_at
    security_event(session, "auth.mfa_enrolled", user.username, origin, {})
    end_other_sign_ins(session, user, origin, "mfa enrolled", user.username, keep=current)


def record_step_up(session: Session, user: User, origin: Origin, purpose: str) -> None:
    security_event(session, "auth.mfa_step_up", user.username, origin, {"for": purpose})


def is_high_risk(settings: Settings, action: str, amount: Decimal | None) -> bool:
    return action in settings.step_up_actions or (
        amount is not None and amount >= settings.step_up_amount
    )


# What a high-risk approval still needs of this sign-in (see `step_up_needed`).
STEP_UP_CODE = "code"
STEP_UP_ENROL = "enrol"


def step_up_needed(
    settings: Settings,
    principal: Principal,
    user: User,
    action: str,
    amount: Decimal | None,
) -> str | None:
    """None when this approval may go ahead as things stand; STEP_UP_CODE when it needs an
    authenticator code (none within STEP_UP_MINUTES on this sign-in); STEP_UP_ENROL when the
    person has no second factor set up and STEP_UP_REQUIRES_MFA says that is not enough."""
    if not is_high_risk(settings, action, amount):
        return None
    if not mfa_enrolled(user):
        return STEP_UP_ENROL if settings.step_up_requires_mfa else None
    fresh_since = datetime.now(UTC) - timedelta(minutes=settings.step_up_minutes)
    checked = principal.mfa_checked_at
    return STEP_UP_CODE if checked is None or checked < fresh_since else None


def step_up(
    session: Session,
    settings: Settings,
    principal: Principal,
    action: str,
    amount: Decimal | None,
    code: str | None,
    origin: Origin,
) -> None:
    """Before a high-risk approval: this sign-in's second-factor check within
    STEP_UP_MINUTES, or a code now. A password alone never clears a high-risk approval
    (unless STEP_UP_REQUIRES_MFA is off)."""
    user = users_repo.by_id(session, principal.user_id)
    if user is None:
        return
    needed = step_up_needed(settings, principal, user, action, amount)
    if needed == STEP_UP_ENROL:
        raise StepUpRequired(
            "this approval is high-risk and needs a second factor: set up an authenticator "
            "app on /account/mfa first, then approve with a code from it"
        )
    if code and needed == STEP_UP_CODE:
        verify_code(session, settings, user, code, origin, "step_up")
        record_step_up(session, user, origin, action)
        return
    if needed == STEP_UP_CODE:
        raise StepUpRequired(
            "this approval is high-risk: confirm it with a fresh authenticator code "
            '("totp" in the API, or the page /account/verify in the browser); this '
            f"sign-in's last check is older than {settings.step_up_minutes} minutes"
        )


def second_factor_missing(policy: PolicyEngine, principal: Principal) -> bool:
    """A role needing MFA reached a sign-in made without it (a role change, a JIT grant)."""
    return principal.mfa_checked_at is None and mfa_required(policy, principal.roles)


def hold_for_second_factor(
    session: Session, settings: Settings, user: User, web_session: WebSession, origin: Origin
) -> None:
    """Such a browser session waits for a code, or for MFA to be set up, before anything else;
    unanswered, it ends within MFA_PENDING_MINUTES like any sign-in owing its code."""
    web_session.stage = AWAITING_CODE if mfa_enrolled(user) else MUST_ENROL
    pending_until = datetime.now(UTC) + timedelta(minutes=settings.mfa_pending_minutes)
    web_session.expires_at = min(web_session.expires_at, pending_until)
    security_event(
        session,
        "auth.mfa_now_required",
        user.username,
        origin,
        {"session": web_session.id, "waits_for": web_session.stage},
    )


# --- sign-in ---------------------------------------------------------------------------


def authenticate(
    session: Session,
    settings: Settings,
    username: str,
    password: str,
    origin: Origin,
    directory: ExternalDirectory | None = None,
) -> User:
    """Check the password; a failure is audited and raises without saying which part was wrong.

    With a directory, unknown usernames and the directory's own people are checked there;
    people from single sign-on or a directory never sign in with a password of ours. The
    session is committed before the directory is asked (see _ask_directory).
    """
    if not username.isprintable():  # also keeps NUL, which PostgreSQL refuses, out of queries
        raise AuthError("wrong username or password")
    _refuse_if_throttled(session, settings, username, origin)
    user = users_repo.by_username(session, username)
    if directory is not None and (user is None or user.auth_source == directory.source):
        return _ask_directory(session, settings, username, password, origin, directory)
    external = user is not None and user.auth_source != LOCAL
    ok = not external and verify_password(user.password_hash if user else None, password)
    if user is None or not ok or not user.is_active:
        reason = f"{user.auth_source} account" if user and external else "password"
        _record_failure(session, settings, username, user, origin, reason)
        raise AuthError("wrong username or password")
    return user


def _ask_directory(
    session: Session,
    settings: Settings,
    username: str,
    password: str,
    origin: Origin,
    directory: ExternalDirectory,
) -> User:
    """A slow directory must hold neither a database connection nor the username's lock,
    so the transaction ends before it is asked. The throttle is checked again under the
    lock once it has answered: guesses sent in parallel meanwhile get no more answers than
    the lockout allows, as if they had queued."""
    session.commit()
    try:
        person = directory.check_password(username, password)
    except DirectoryIncident as incident:
        details = {"source": directory.source, **incident.details}
        security_event(session, incident.action, username, origin, details, actor="system")
        raise
    _refuse_if_throttled(session, settings, username, origin)
    if person is None:
        user = users_repo.by_username(session, username)
        _record_failure(session, settings, username, user, origin, directory.source)
        raise AuthError("wrong username or password")
    return directory.provision(session, person, origin)


def complete_login(session: Session, user: User, origin: Origin, *, mfa: bool) -> None:
    sessions_repo.clear_failures(session, user.username, datetime.now(UTC))
    security_event(
        session, "auth.login", user.username, origin, {"channel": origin.channel, "mfa": mfa}
    )


@dataclass(frozen=True)
class SignIn:
    user: User
    stage: str  # ACTIVE, AWAITING_CODE or MUST_ENROL


def sign_in(
    session: Session,
    settings: Settings,
    policy: PolicyEngine,
    username: str,
    password: str,
    code: str | None,
    origin: Origin,
    directory: ExternalDirectory | None = None,
) -> SignIn:
    """Password, then the authenticator code if enrolled; a role needing MFA without it: enrol.

    With a directory, the session is committed before the directory is asked."""
    user = authenticate(session, settings, username, password, origin, directory)
    if mfa_enrolled(user):
        if not code:
            return SignIn(user, AWAITING_CODE)
        verify_code(session, settings, user, code, origin, "login")
        complete_login(session, user, origin, mfa=True)
        return SignIn(user, ACTIVE)
    if mfa_required(policy, users_repo.roles_of(session, user.id)):
        security_event(session, "auth.mfa_enrolment_required", user.username, origin, {})
        return SignIn(user, MUST_ENROL)
    complete_login(session, user, origin, mfa=False)
    return SignIn(user, ACTIVE)


# --- API tokens ------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int


def issue_tokens(
    session: Session,
    settings: Settings,
    user: User,
    family: str | None = None,
    mfa_at: datetime | None = None,
) -> TokenPair:
    """`mfa_at`: when this sign-in proved its second factor; rotation carries it forward."""
    key = settings.secret_key.get_secret_value()
    lifetime = timedelta(minutes=settings.access_token_minutes)
    access, _ = encode_token(
        key, user_id=user.id, token_type=ACCESS, lifetime=lifetime, mfa_at=mfa_at
    )
    refresh, claims = encode_token(
        key,
        user_id=user.id,
        token_type=REFRESH,
        lifetime=timedelta(days=settings.refresh_token_days),
        family=family or secrets.token_hex(16),
        mfa_at=mfa_at,
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
        security_event(
            session, "auth.refresh_reuse", user.username, origin, {"family": stored.family_id}
        )
        raise AuthError("refresh token already used; every session of this login is revoked")
    started = sessions_repo.family_started_at(session, stored.family_id)
    if started is None or started + timedelta(days=settings.refresh_family_days) <= now:
        users_repo.revoke_token_family(session, stored.family_id, now)
        security_event(
            session,
            "auth.refresh_family_expired",
            user.username,
            origin,
            {"family": stored.family_id},
        )
        raise AuthError(
            f"this sign-in is older than {settings.refresh_family_days} days: "
            "sign in again with your password"
        )
    stored.used_at = now
    return issue_tokens(session, settings, user, family=stored.family_id, mfa_at=claims.mfa_at)


def person_from_access_token(
    session: Session, settings: Settings, token: str
) -> tuple[User, TokenClaims]:
    """The token's person, if active, and what the token says of the sign-in."""
    try:
        claims = decode_token(settings.secret_key.get_secret_value(), token, ACCESS)
    except InvalidToken as exc:
        raise AuthError("invalid or expired token") from exc
    user = users_repo.by_id(session, claims.user_id)
    if user is None or not user.is_active:
        raise AuthError("invalid or expired token")
    return user, claims


# --- browser sessions ------------------------------------------------------------------


@dataclass(frozen=True)
class NewWebSession:
    cookie_value: str
    csrf_token: str
    expires_at: datetime


def _revoke(
    session: Session,
    web_session: WebSession,
    reason: str,
    username: str,
    origin: Origin,
    actor: str,
) -> None:
    web_session.revoked_at = datetime.now(UTC)
    web_session.revoked_reason = reason
    security_event(
        session,
        "auth.session_revoked",
        username,
        origin,
        {"session": web_session.id, "reason": reason, "ip": web_session.ip},
        actor,
    )


def _make_room(session: Session, settings: Settings, user: User, origin: Origin) -> None:
    """At the concurrent-session limit, the oldest sessions are revoked for the new one."""
    now = datetime.now(UTC)
    idle = timedelta(minutes=settings.session_idle_minutes)
    live = [
        s
        for s in sessions_repo.active_sessions_oldest_first(session, user.id, now)
        if s.last_seen_at + idle > now
    ]
    excess = len(live) - settings.max_sessions_per_user + 1
    for oldest in live[: max(0, excess)]:
        _revoke(session, oldest, "session limit", user.username, origin, user.username)


def open_web_session(
    session: Session,
    settings: Settings,
    user: User,
    origin: Origin,
    stage: str = ACTIVE,
    mfa_verified_at: datetime | None = None,
) -> NewWebSession:
    """A browser session; one still waiting for a code or an enrolment lives only minutes."""
    cookie_value = new_token()
    csrf = new_token()
    now = datetime.now(UTC)
    if stage == ACTIVE:
        _make_room(session, settings, user, origin)
        expires_at = now + timedelta(hours=settings.session_hours)
    else:
        expires_at = now + timedelta(minutes=settings.mfa_pending_minutes)
    users_repo.add_web_session(
        session,
        WebSession(
            token_hash=token_digest(cookie_value),
            user_id=user.id,
            csrf_token=csrf,
            ip=origin.ip,
            user_agent=(origin.device or "")[:256] or None,
            stage=stage,
            mfa_verified_at=mfa_verified_at,
            last_seen_at=now,
            expires_at=expires_at,
        ),
    )
    return NewWebSession(cookie_value, csrf, expires_at)


def activate_web_session(
    session: Session, settings: Settings, user: User, pending: WebSession, origin: Origin
) -> NewWebSession:
    """The code was right (or MFA was just set up): a full session replaces the pending one,
    under a new cookie and CSRF token, so a cookie planted before the code is worth nothing.
    The caller sets the new cookie."""
    pending.revoked_at = datetime.now(UTC)
    pending.revoked_reason = "replaced on activation"
    opened = open_web_session(session, settings, user, origin, mfa_verified_at=user.mfa_verified_at)
    complete_login(session, user, origin, mfa=True)
    return opened


def resolve_web_session(
    session: Session, settings: Settings, cookie_value: str, origin: Origin
) -> tuple[User, WebSession] | None:
    """The session behind a cookie, if live; an idle one is revoked here. Caller commits."""
    now = datetime.now(UTC)
    web_session = users_repo.live_web_session(session, token_digest(cookie_value), now)
    if web_session is None:
        return None
    user = users_repo.by_id(session, web_session.user_id)
    if user is None or not user.is_active:
        return None
    if web_session.last_seen_at + timedelta(minutes=settings.session_idle_minutes) <= now:
        _revoke(session, web_session, "idle", user.username, origin, "system")
        return None
    if now - web_session.last_seen_at >= TOUCH_EVERY:
        web_session.last_seen_at = now
    return user, web_session


def close_web_session(session: Session, cookie_value: str, username: str, origin: Origin) -> None:
    web_session = sessions_repo.by_token_hash(session, token_digest(cookie_value))
    if web_session is not None and web_session.revoked_at is None:
        web_session.revoked_at = datetime.now(UTC)
        web_session.revoked_reason = "signed out"
    security_event(session, "auth.logout", username, origin, {})


def end_other_sign_ins(
    session: Session,
    user: User,
    origin: Origin,
    reason: str,
    actor: str,
    keep: WebSession | None = None,
) -> None:
    """End a user's browser sessions (but `keep`) and every refresh-token family, recorded."""
    now = datetime.now(UTC)
    ended = [
        web_session
        for web_session in sessions_repo.live_sessions_of(session, user.id, now)
        if keep is None or web_session.token_hash != keep.token_hash
    ]
    for web_session in ended:
        _revoke(session, web_session, reason, user.username, origin, actor)
    families = sessions_repo.revoke_refresh_tokens_of(session, user.id, now)
    security_event(
        session,
        "auth.sign_ins_ended",
        user.username,
        origin,
        {"reason": reason, "sessions": len(ended), "token_families": families},
        actor,
    )


def revoke_session(
    session: Session, session_id: int, actor: User, origin: Origin, *, anyone: bool
) -> WebSession:
    """Revoke one session: one's own, or anyone's for a holder of sessions:manage."""
    web_session = sessions_repo.by_public_id(session, session_id)
    if web_session is None or (not anyone and web_session.user_id != actor.id):
        raise AuthError("no such session")  # someone else's session is not even named
    if web_session.revoked_at is not None:
        raise AuthError("this session is already ended")
    owner = users_repo.by_id(session, web_session.user_id)
    assert owner is not None
    reason = "revoked by owner" if owner.id == actor.id else "revoked by administrator"
    _revoke(session, web_session, reason, owner.username, origin, actor.username)
    return web_session

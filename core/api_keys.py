"""API keys for integrations (BI systems): issue, authenticate, list, revoke.

A key is `bo_<prefix>_<secret>`: the prefix finds the row, the SHA-256 of the whole key is
compared in constant time. A fast hash is enough because the secret is 256 random bits:
guessing it is hopeless however fast the hash, so a slow password hash (argon2) would buy
no safety and would cost tens of milliseconds on every API call.

A key carries a subset of its owner's permissions. At use the principal is the owner's,
with the key's permissions as a filter (`Principal.permission_filter`): the policy engine
grants what both the owner's roles and the key allow, so a key loses what its owner loses.
Creation and revocation are security events in the audit store; so is a refused key,
until its address has spent its budget of refusals (core.credential_guard), after which
the address is answered 429 and one event records the throttling.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Literal

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session, aliased

from core import audit, credential_guard
from core.auth import AuthError
from core.models import MAX_USERNAME, ApiKey, User
from core.repositories import users as users_repo
from core.request_service import RequestError, text_problem
from core.runtime import Runtime
from core.settings import Settings
from core.times import as_utc
from policies.engine import PolicyEngine
from policies.snapshot import Principal
from workflows.contracts import Origin

MANAGE = "api_keys:manage"
TOKEN_START = "bo_"
_TOKEN = re.compile(r"bo_([0-9a-f]{12})_[A-Za-z0-9_-]{43}")
MAX_LIFETIME = timedelta(days=365)
MAX_NAME = 100
MAX_PERMISSIONS = 50
MAX_ACTIVE_KEYS = 20
# Recording every use would write a row per request; a minute is precise enough to tell
# whether a key is still in use.
LAST_USED_PRECISION = timedelta(minutes=1)
# Refusals of keys no row matches share one stream, so that made-up prefixes cannot create
# unbounded streams.
UNKNOWN_KEYS_STREAM = "api_keys:refused"

KeyState = Literal["active", "expired", "revoked"]


@dataclass(frozen=True)
class NewApiKey:
    name: str
    expires_at: datetime
    permissions: list[str]
    # Someone else's key (a service user's), for holders of api_keys:manage.
    owner: str | None = None


@dataclass(frozen=True)
class KeyRow:
    key: ApiKey
    owner: str
    created_by: str

    def state(self, now: datetime) -> KeyState:
        if self.key.revoked_at is not None:
            return "revoked"
        return "expired" if self.key.expires_at <= now else "active"


@dataclass(frozen=True)
class IssuedKey:
    key_id: int
    secret: str


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _snapshot(row: ApiKey, owner: str) -> dict[str, object]:
    return {
        "name": row.name,
        "prefix": row.prefix,
        "owner": owner,
        "permissions": list(row.permissions),
        "expires_at": row.expires_at.isoformat(),
        "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None,
    }


# --- issue -----------------------------------------------------------------------------


def _owner(rt: Runtime, session: Session, principal: Principal, name: str | None) -> User:
    if not name or name.strip() == principal.username:
        user = session.get(User, principal.user_id)
        assert user is not None
        return user
    if not rt.policy.authorize(principal, MANAGE):
        raise RequestError(403, "you may only create API keys for yourself")
    problem = text_problem(name.strip(), MAX_USERNAME)
    if problem is not None:
        raise RequestError(422, f"owner: {problem}", {"owner": problem})
    user = users_repo.by_username(session, name.strip())
    if user is None or not user.is_active:
        raise RequestError(422, f"no active user named '{name.strip()}'", {"owner": "unknown"})
    return user


# What a key may carry: reading, and taking a report away (audit:export).
KEY_VERBS = ("view", "export")


def _scope(
    policy: PolicyEngine, owner: Principal, creator: Principal, wanted: list[str]
) -> list[str]:
    """The key's permissions: each a view or export permission known to the policy files, held by
    the owner, and by whoever creates the key (an admin cannot hand out what they lack)."""
    permissions = list(dict.fromkeys(p.strip() for p in wanted))
    if not permissions:
        raise RequestError(422, "permissions: name at least one", {"permissions": "required"})
    if len(permissions) > MAX_PERMISSIONS:
        raise RequestError(422, f"permissions: at most {MAX_PERMISSIONS}")
    for permission in permissions:
        problem = policy.permission_problem(permission)
        if problem is not None:
            raise RequestError(422, f"permissions: {problem}", {"permissions": problem})
        if permission.partition(":")[2] == "approve":
            raise RequestError(
                422,
                f"permissions: '{permission}' cannot be given to an API key: "
                "deciding is a human act",
                {"permissions": "approve"},
            )
        if permission.partition(":")[2] not in KEY_VERBS:
            raise RequestError(
                422,
                f"permissions: '{permission}' cannot be given to an API key: "
                "keys only read (view and export permissions)",
                {"permissions": "not a view"},
            )
        if creator.user_id != owner.user_id and not policy.authorize(creator, permission):
            raise RequestError(
                403,
                f"permissions: you do not hold '{permission}' yourself, so you cannot "
                "put it on someone's key",
                {"permissions": "not held by you"},
            )
        if not policy.authorize(owner, permission):
            raise RequestError(
                403,
                f"permissions: {owner.username} does not hold '{permission}'; "
                "a key cannot hold more than its owner",
                {"permissions": "not held"},
            )
    return permissions


def create(rt: Runtime, principal: Principal, new: NewApiKey, origin: Origin) -> IssuedKey:
    """Validate, store and audit a key; the secret is returned here and never again."""
    name = new.name.strip()
    problem = text_problem(name, MAX_NAME) or (None if name else "required")
    if problem:
        raise RequestError(422, f"name: {problem}", {"name": problem})
    now = datetime.now(UTC)
    expires_at = as_utc(new.expires_at)
    if expires_at <= now:
        raise RequestError(422, "expires_at: must be in the future", {"expires_at": "past"})
    if expires_at > now + MAX_LIFETIME:
        raise RequestError(
            422, "expires_at: a key lives at most one year", {"expires_at": "too far"}
        )
    with rt.sessions() as session:
        owner = _owner(rt, session, principal, new.owner)
        permissions = _scope(
            rt.policy, users_repo.principal_for(session, owner), principal, new.permissions
        )
        # One owner's keys are counted and added one request at a time.
        session.execute(select(User.id).where(User.id == owner.id).with_for_update())
        active = session.execute(
            select(func.count())
            .select_from(ApiKey)
            .where(ApiKey.owner_id == owner.id, ApiKey.revoked_at.is_(None))
            .where(ApiKey.expires_at > now)
        ).scalar_one()
        if active >= MAX_ACTIVE_KEYS:
            raise RequestError(
                409, f"{owner.username} already has {active} active keys; revoke one first"
            )
        prefix = secrets.token_hex(6)
        secret = f"{TOKEN_START}{prefix}_{secrets.token_urlsafe(32)}"
        row = ApiKey(
            prefix=prefix,
            secret_hash=_digest(secret),
            name=name,
            owner_id=owner.id,
            created_by_id=principal.user_id,
            permissions=permissions,
            created_at=now,
            expires_at=expires_at,
        )
        session.add(row)
        session.flush()
        audit.append_security_event(
            session,
            action="api_key.created",
            stream=f"user:{owner.username}",
            target=f"api_key:{prefix}",
            actor=principal.username,
            origin=origin,
            after=_snapshot(row, owner.username),
        )
        session.commit()
        return IssuedKey(row.id, secret)


# --- use -------------------------------------------------------------------------------


def looks_like_key(token: str) -> bool:
    return token.startswith(TOKEN_START)


def _refuse(
    session: Session,
    settings: Settings,
    origin: Origin,
    reason: str,
    message: str,
    key: ApiKey | None = None,
    owner: str | None = None,
    prefix: str | None = None,
) -> AuthError:
    """Record a refused key (committed now: the request itself fails) and say why; beyond
    the address's budget of refusals, CredentialsThrottled instead, whatever the reason."""
    credential_guard.count_refusal(session, settings, origin, "api_key")
    audit.append_security_event(
        session,
        action="api_key.refused",
        stream=f"user:{owner}" if owner else UNKNOWN_KEYS_STREAM,
        target=f"api_key:{prefix}" if prefix else "api_key:malformed",
        actor=owner or "unknown",
        origin=origin,
        after={"reason": reason, "key_id": key.id if key else None},
    )
    session.commit()
    return AuthError(message)


def authenticate(
    session: Session, settings: Settings, token: str, origin: Origin
) -> tuple[ApiKey, User]:
    """The key and its owner, or AuthError after recording the refusal. Marks the key used
    (in the caller's transaction)."""
    match = _TOKEN.fullmatch(token)
    if match is None:
        raise _refuse(session, settings, origin, "malformed", "invalid API key")
    prefix = match.group(1)
    key = session.execute(select(ApiKey).where(ApiKey.prefix == prefix)).scalar_one_or_none()
    if key is None:
        raise _refuse(session, settings, origin, "unknown", "invalid API key", prefix=prefix)
    owner = session.get(User, key.owner_id)
    assert owner is not None  # the foreign key cascades
    now = datetime.now(UTC)
    refusal: tuple[str, str] | None = None
    if not hmac.compare_digest(key.secret_hash, _digest(token)):
        refusal = ("wrong_secret", "invalid API key")
    elif key.revoked_at is not None:
        refusal = ("revoked", "this API key has been revoked")
    elif key.expires_at <= now:
        refusal = ("expired", f"this API key expired at {key.expires_at:%Y-%m-%d %H:%M} UTC")
    elif not owner.is_active:
        refusal = ("owner_inactive", "the owner of this API key is no longer active")
    if refusal is not None:
        raise _refuse(
            session, settings, origin, *refusal, key=key, owner=owner.username, prefix=prefix
        )
    if key.last_used_at is None or key.last_used_at < now - LAST_USED_PRECISION:
        key.last_used_at = now
    return key, owner


def principal_for(session: Session, policy: PolicyEngine, key: ApiKey, owner: User) -> Principal:
    """The owner as the policy engine sees them, narrowed to the key's permissions."""
    principal = users_repo.principal_for(session, owner, policy)
    return replace(principal, permission_filter=frozenset(key.permissions))


# --- list and revoke -------------------------------------------------------------------


def _rows() -> Select[ApiKey, str, str]:
    owner = aliased(User)
    creator = aliased(User)
    return (
        select(ApiKey, owner.username, creator.username)
        .join(owner, owner.id == ApiKey.owner_id)
        .join(creator, creator.id == ApiKey.created_by_id)
    )


def listing(
    rt: Runtime,
    session: Session,
    principal: Principal,
    *,
    everyone: bool,
    before_id: int | None,
    limit: int,
    others_in_force: bool = False,
) -> list[KeyRow]:
    """The caller's keys, or everyone's for holders of api_keys:manage; newest first.
    `others_in_force`: only other people's keys that still work (those one may revoke)."""
    if (everyone or others_in_force) and not rt.policy.authorize(principal, MANAGE):
        raise RequestError(403, f"listing every API key needs '{MANAGE}'")
    query = _rows().order_by(ApiKey.id.desc()).limit(limit)
    if others_in_force:
        query = query.where(
            ApiKey.owner_id != principal.user_id,
            ApiKey.revoked_at.is_(None),
            ApiKey.expires_at > datetime.now(UTC),
        )
    elif not everyone:
        query = query.where(ApiKey.owner_id == principal.user_id)
    if before_id is not None:
        query = query.where(ApiKey.id < before_id)
    return [KeyRow(key, owner, creator) for key, owner, creator in session.execute(query)]


def visible(rt: Runtime, session: Session, principal: Principal, key_id: int) -> KeyRow:
    """A key the caller owns, or any key for holders of api_keys:manage; 404 otherwise."""
    found = session.execute(_rows().where(ApiKey.id == key_id)).one_or_none()
    if found is None:
        raise RequestError(404, "API key not found")
    row = KeyRow(found[0], found[1], found[2])
    if row.key.owner_id != principal.user_id and not rt.policy.authorize(principal, MANAGE):
        raise RequestError(404, "API key not found")
    return row


def revoke(rt: Runtime, principal: Principal, key_id: int, origin: Origin) -> None:
    with rt.sessions() as session:
        row = visible(rt, session, principal, key_id)
        key = session.execute(
            select(ApiKey).where(ApiKey.id == key_id).with_for_update()
        ).scalar_one()
        if key.revoked_at is not None:
            raise RequestError(409, "this API key is already revoked")
        key.revoked_at = datetime.now(UTC)
        key.revoked_by_id = principal.user_id
        audit.append_security_event(
            session,
            action="api_key.revoked",
            stream=f"user:{row.owner}",
            target=f"api_key:{key.prefix}",
            actor=principal.username,
            origin=origin,
            after=_snapshot(key, row.owner),
        )
        session.commit()

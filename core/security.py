"""Password hashing (argon2) and JWTs (python-jose, algorithm pinned)."""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from jose import JWTError, jwt

JWT_ALGORITHM = "HS256"
JWT_ISSUER = "backoffice"
JWT_AUDIENCE = "backoffice-api"
ACCESS = "access"
REFRESH = "refresh"
MAX_USER_ID = 2**31 - 1  # users.id is an INTEGER

_hasher = PasswordHasher()
# Verified against when the username is unknown, so both paths cost the same time.
_DUMMY_HASH = _hasher.hash("not-a-real-password")


def address_block(ip: str) -> str:
    """Whose budget a failure from this address spends: the address itself, or for IPv6
    its /64 (one subscriber's network: a host there can take a new address every attempt).
    Text that is not an address is returned as it is."""
    try:
        parsed = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is None:
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return ip


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class InvalidToken(Exception):
    pass


@dataclass(frozen=True)
class TokenClaims:
    user_id: int
    token_type: str
    jti: str
    family: str | None
    expires_at: datetime
    # When this sign-in last proved its second factor (a step-up within minutes of it
    # needs no new code); None for a sign-in made without one.
    mfa_at: datetime | None = None


def encode_token(
    key: str,
    *,
    user_id: int,
    token_type: str,
    lifetime: timedelta,
    family: str | None = None,
    now: datetime | None = None,
    mfa_at: datetime | None = None,
) -> tuple[str, TokenClaims]:
    issued = now or datetime.now(UTC)
    claims = TokenClaims(
        user_id=user_id,
        token_type=token_type,
        jti=secrets.token_hex(16),
        family=family,
        expires_at=issued + lifetime,
        mfa_at=mfa_at,
    )
    payload: dict[str, Any] = {
        "sub": str(user_id),
        "typ": token_type,
        "jti": claims.jti,
        "iss": JWT_ISSUER,
        "aud": JWT_AUDIENCE,
        "iat": int(issued.timestamp()),
        "exp": int(claims.expires_at.timestamp()),
    }
    if family is not None:
        payload["fam"] = family
    if mfa_at is not None:
        payload["mfa"] = int(mfa_at.timestamp())
    return jwt.encode(payload, key, algorithm=JWT_ALGORITHM), claims


def decode_token(key: str, token: str, expected_type: str) -> TokenClaims:
    """Only HS256 is accepted: `none` and algorithm-confusion tokens are refused."""
    try:
        header = jwt.get_unverified_header(token)
        if header.get("alg") != JWT_ALGORITHM:
            raise InvalidToken("token algorithm not accepted")
        payload = jwt.decode(
            token,
            key,
            algorithms=[JWT_ALGORITHM],
            audience=JWT_AUDIENCE,
            issuer=JWT_ISSUER,
            options={"require_aud": True, "require_iss": True, "require_exp": True},
        )
    except JWTError as exc:
        raise InvalidToken(str(exc)) from exc
    if payload.get("typ") != expected_type:
        raise InvalidToken(f"expected a {expected_type} token")
    try:
        user_id = int(payload["sub"])
        if not 0 < user_id <= MAX_USER_ID:
            raise ValueError("subject out of range")
        return TokenClaims(
            user_id=user_id,
            token_type=payload["typ"],
            jti=str(payload["jti"]),
            family=payload.get("fam"),
            expires_at=datetime.fromtimestamp(int(payload["exp"]), UTC),
            mfa_at=datetime.fromtimestamp(int(payload["mfa"]), UTC) if "mfa" in payload else None,
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise InvalidToken("malformed token claims") from exc

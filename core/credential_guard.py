"""Refused machine credentials (API keys, bearer tokens, the SCIM token), per client address.

Every refusal takes one token from the address's bucket (core/rate_limit.py, subject
`credentials:<ip>`; CREDENTIAL_FAILURES_PER_HOUR / CREDENTIAL_FAILURES_BURST). While the
address has budget, the refusal is audited as a security event; once it is spent, the
refusal is a 429 and is not audited one by one: only the first of a throttling episode
writes `credential.throttled`. An episode ends with the next refusal the budget allows
again. So a flood from one address adds at most burst + per_hour audit rows an hour, plus
one per episode.

Good credentials never touch the bucket, and are accepted even from a throttled address:
the secrets are too long to guess, so the limit guards the audit store, not the secrets,
and many clients share an address behind a NAT or a proxy.
"""

from __future__ import annotations

import hashlib

from jose import jws
from jose.exceptions import ExpiredSignatureError, JOSEError
from sqlalchemy import delete, func
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from core import audit, rate_limit
from core.auth import AuthError, person_from_access_token
from core.models import RateLimitBucket, User
from core.security import JWT_ALGORITHM, InvalidToken, TokenClaims, address_block
from core.settings import Settings
from policies.engine import RateLimitDef
from workflows.contracts import Origin

# Refusals that name no user (forged tokens, the SCIM token, throttling) share one stream,
# so that made-up credentials cannot create unbounded streams.
REFUSED_STREAM = "credentials:refused"
# The longest textual IP address (IPv6 with an embedded IPv4); longer "addresses" (an odd
# ASGI server's socket path) are hashed to fit the bucket's subject column.
_MAX_ADDRESS = 45
EXPIRED = "expired"


class CredentialsThrottled(AuthError):
    """Too many refused credentials from this address; retry after some seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            f"too many refused credentials from this address; retry in {retry_after} s"
        )
        self.retry_after = retry_after


def _address(origin: Origin) -> str:
    """Whose budget a refusal spends (see address_block)."""
    ip = address_block(origin.ip or "unknown")
    return ip if len(ip) <= _MAX_ADDRESS else hashlib.sha256(ip.encode()).hexdigest()[:32]


def _budget(settings: Settings) -> RateLimitDef:
    return RateLimitDef(
        per_hour=settings.credential_failures_per_hour,
        burst=settings.credential_failures_burst,
    )


def _record(
    session: Session, action: str, target: str, origin: Origin, after: dict[str, object]
) -> None:
    audit.append_security_event(
        session,
        stream=REFUSED_STREAM,
        action=action,
        target=target,
        actor="unknown",
        origin=origin,
        after=after,
    )


def count_refusal(session: Session, settings: Settings, origin: Origin, credential: str) -> None:
    """Take one refusal from the address's budget, in the caller's transaction: the caller
    then audits the refusal and commits soon (the bucket row is locked until then).

    Beyond the budget: commits the episode's one `credential.throttled` event (if this is
    the episode's first refusal) and raises CredentialsThrottled."""
    address = _address(origin)
    verdict = rate_limit.take(session, f"credentials:{address}", _budget(settings))
    # While an episode lasts its marker row exists; inserting it tells the first refusal.
    marker = f"credentials-held:{address}"
    if verdict.allowed:
        session.execute(delete(RateLimitBucket).where(RateLimitBucket.subject == marker))
        return
    episode_starts = session.execute(
        pg_insert(RateLimitBucket)
        .values(subject=marker, tokens=0, refilled_at=func.now())
        .on_conflict_do_nothing(index_elements=["subject"])
        .returning(RateLimitBucket.subject)
    ).scalar_one_or_none()
    if episode_starts is not None:
        _record(
            session,
            "credential.throttled",
            f"address:{address}",
            origin,
            {
                "credential": credential,
                "per_hour": verdict.limit.per_hour,
                "burst": verdict.limit.burst,
                "retry_after": verdict.retry_after,
            },
        )
    session.commit()
    raise CredentialsThrottled(verdict.retry_after)


def refuse(
    session: Session,
    settings: Settings,
    origin: Origin,
    credential: str,
    action: str,
    after: dict[str, object],
) -> None:
    """Count a refused credential and, within the budget, audit it; commits."""
    count_refusal(session, settings, origin, credential)
    _record(session, action, credential, origin, after)
    session.commit()


def _token_refusal_reason(settings: Settings, token: str, refused: AuthError) -> str:
    """Why an access token was refused, for the audit trail (never the token itself)."""
    invalid = refused.__cause__
    if not isinstance(invalid, InvalidToken):
        return "unknown_user"  # a good token of a user deleted or deactivated since
    if isinstance(invalid.__cause__, ExpiredSignatureError):
        return EXPIRED  # the signature is checked before the expiry: a token we issued
    try:
        jws.verify(token, settings.secret_key.get_secret_value(), algorithms=[JWT_ALGORITHM])
    except JOSEError:
        return "bad_signature"  # forged, tampered, another key or another algorithm
    return "wrong_claims"  # ours, but the wrong type, audience, issuer or claims


def person_of_access_token(
    session: Session, settings: Settings, token: str, origin: Origin
) -> tuple[User, TokenClaims]:
    """The bearer token's active person and claims, or AuthError after counting and
    auditing the refusal (CredentialsThrottled beyond the address's budget).

    An expired token is routine (clients refresh when told), proves the client once held a
    token we issued, and guesses nothing: it is neither counted nor audited."""
    try:
        return person_from_access_token(session, settings, token)
    except AuthError as refused:
        reason = _token_refusal_reason(settings, token, refused)
        if reason != EXPIRED:
            refuse(
                session, settings, origin, "access_token", "auth.token_refused", {"reason": reason}
            )
        raise

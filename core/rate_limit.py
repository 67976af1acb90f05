"""Rate limits for the API: a token bucket per subject (a person or an API key), kept in
PostgreSQL so that every web process shares it, with no other infrastructure.

A bucket holds up to `burst` tokens and refills at `per_hour / 3600` tokens a second; a
request takes one token or is refused. The common case is one UPDATE ... RETURNING that
refills and takes a token atomically (the row lock is held for that statement only, so
requests of one subject never wait on each other's work); a subject's first request
inserts its row; only a refusal reads the bucket again to say when to retry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.orm import Session

from policies.engine import RateLimitDef

# The refill is worked out from the database clock, so web processes need not agree on time.
_REFILLED = "least(:burst, tokens + extract(epoch from clock_timestamp() - refilled_at) * :rate)"

_TAKE = text(
    f"UPDATE rate_limit_buckets SET tokens = {_REFILLED} - 1, refilled_at = clock_timestamp() "
    f"WHERE subject = :subject AND {_REFILLED} >= 1 RETURNING tokens"
)
_FIRST = text(
    "INSERT INTO rate_limit_buckets (subject, tokens, refilled_at) "
    "VALUES (:subject, :burst - 1, clock_timestamp()) "
    "ON CONFLICT (subject) DO NOTHING RETURNING tokens"
)
_LEFT = text(f"SELECT {_REFILLED} FROM rate_limit_buckets WHERE subject = :subject")


@dataclass(frozen=True)
class RateVerdict:
    allowed: bool
    limit: RateLimitDef
    remaining: float

    @property
    def rate(self) -> float:
        return self.limit.per_hour / 3600

    @property
    def retry_after(self) -> int:
        """Whole seconds until one token is back (0 when allowed)."""
        return 0 if self.allowed else max(1, math.ceil((1 - self.remaining) / self.rate))

    def headers(self) -> dict[str, str]:
        headers = {
            "X-RateLimit-Limit": str(self.limit.per_hour),
            "X-RateLimit-Burst": str(self.limit.burst),
            "X-RateLimit-Remaining": str(math.floor(self.remaining)),
            # Seconds until the bucket is full again.
            "X-RateLimit-Reset": str(math.ceil((self.limit.burst - self.remaining) / self.rate)),
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.retry_after)
        return headers


def take(session: Session, subject: str, limit: RateLimitDef) -> RateVerdict:
    """Take one request from the subject's bucket, in the caller's transaction (commit soon:
    the bucket row stays locked until then)."""
    values = {"subject": subject, "burst": limit.burst, "rate": limit.per_hour / 3600}
    left = session.execute(_TAKE, values).scalar_one_or_none()
    if left is None:
        left = session.execute(_FIRST, values).scalar_one_or_none()
    if left is None:  # another request inserted the row between the two statements
        left = session.execute(_TAKE, values).scalar_one_or_none()
    if left is not None:
        return RateVerdict(True, limit, float(left))
    return RateVerdict(False, limit, float(session.execute(_LEFT, values).scalar_one()))

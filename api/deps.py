"""Request-scoped dependencies shared by the API routers."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import anyio
from fastapi import Depends, HTTPException, Path, Request, Response, status
from fastapi.responses import StreamingResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.types import Receive, Scope, Send

from core import api_keys, credential_guard, denials, rate_limit
from core.auth import AuthError, second_factor_missing
from core.credential_guard import CredentialsThrottled
from core.exports import ExportSlots, export_filename
from core.models import ApiKey, User
from core.repositories import users as users_repo
from core.runtime import Runtime
from policies.snapshot import Principal
from workflows.contracts import Origin


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_session(rt: RuntimeDep) -> Iterator[Session]:
    with rt.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]

_bearer = HTTPBearer(auto_error=False)
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)
# What an API key may never do, by route: these are acts of a person.
_HUMAN_ONLY = {
    "/api/v1/requests/{request_id}/decision": "deciding on a request is a human act",
    "/api/v1/tasks/bulk-decision": "deciding on a request is a human act",
}
_KEY_MANAGEMENT = "/api/v1/api-keys"


@dataclass(frozen=True)
class Caller:
    user: User
    principal: Principal
    # The API key the call came with; None for a person's bearer token.
    api_key: ApiKey | None = None


# All an API key may call: reports, each behind a view permission the key must hold.
KEY_READABLE = frozenset(
    {"/api/v1/payments", "/api/v1/audit", "/api/v1/audit/export", "/api/v1/roles", "/api/v1/me"}
)


def _refuse_beyond_reading(request: Request) -> None:
    path = getattr(request.scope.get("route"), "path", "")
    reason = _HUMAN_ONLY.get(path)
    if reason is None and path.startswith(_KEY_MANAGEMENT):
        reason = "API keys are managed by a person signed in, not with an API key"
    if reason is None and (request.method != "GET" or path not in KEY_READABLE):
        reason = (
            "API keys only read reports (payments, the audit trail and its export, roles); "
            "they act on nothing"
        )
    if reason is not None:
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"an API key cannot do this: {reason}")


def current_caller(
    request: Request,
    response: Response,
    session: SessionDep,
    rt: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    key_header: Annotated[str | None, Depends(_api_key_header)],
) -> Caller:
    """A person (bearer JWT) or an API key (`Authorization: Bearer bo_...` or
    `X-API-Key`), within their rate limit."""
    bearer = None
    if credentials is not None and credentials.scheme.lower() == "bearer":
        bearer = credentials.credentials
    if bearer is None and key_header is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing bearer token or API key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if bearer is not None and key_header is not None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "send a bearer token or an X-API-Key header, not both"
        )
    token = bearer or key_header or ""
    key: ApiKey | None = None
    origin = origin_of(request, "api")
    try:
        if key_header is not None or api_keys.looks_like_key(token):
            key, user = api_keys.authenticate(session, rt.settings, token, origin)
            principal = api_keys.principal_for(session, rt.policy, key, user)
        else:
            user, claims = credential_guard.person_of_access_token(
                session, rt.settings, token, origin
            )
            principal = users_repo.principal_for(session, user, rt.policy, claims.mfa_at)
            if second_factor_missing(rt.policy, principal):
                raise HTTPException(
                    status.HTTP_403_FORBIDDEN,
                    "one of your roles now requires multi-factor authentication: sign in "
                    'again with your authenticator code ("totp"), or set it up at '
                    "/account/mfa in the web console first",
                )
    except CredentialsThrottled as exc:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            str(exc),
            headers={"Retry-After": str(exc.retry_after)},
        ) from None
    except AuthError as exc:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            str(exc),
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        ) from None
    if key is not None:
        _refuse_beyond_reading(request)
    if rt.settings.api_rate_limits:
        # A key's calls count against the key and against its owner: many keys never
        # multiply a person's limit.
        subjects = [f"user:{user.id}"] + ([f"key:{key.id}"] if key is not None else [])
        limit = rt.policy.rate_limit_of(principal)
        verdicts = [rate_limit.take(session, subject, limit) for subject in subjects]
        verdict = min(verdicts, key=lambda v: (v.allowed, v.remaining))
        session.commit()  # releases the bucket row and records the key's use
        if not verdict.allowed:
            raise HTTPException(
                status.HTTP_429_TOO_MANY_REQUESTS,
                f"rate limit of {verdict.limit.per_hour} requests an hour reached; "
                f"retry in {verdict.retry_after} s",
                headers=verdict.headers(),
            )
        response.headers.update(verdict.headers())
    else:
        session.commit()  # records the key's use
    return Caller(user, principal, key)


CallerDep = Annotated[Caller, Depends(current_caller)]


def origin_of(request: Request, channel: str) -> Origin:
    return Origin(
        channel=channel,
        ip=client_address(request),
        device=request.headers.get("user-agent"),
    )


def client_address(request: Request) -> str | None:
    """The client's IP address; None when what the connection (or a trusted proxy's
    X-Forwarded-For) says is not one, so nothing unparsed is stored or counted."""
    host = request.client.host if request.client else None
    if host is None:
        return None
    try:
        return str(ipaddress.ip_address(host.split("%", 1)[0]))
    except ValueError:
        return None


# Where refusals from `require` came from (the caller's address is not at hand there).
API_ORIGIN = Origin(channel="api")


def require(rt: Runtime, principal: Principal, permission: str) -> None:
    """403 unless the principal holds the permission; every refusal is recorded."""
    verdict = rt.policy.authorize(principal, permission)
    if not verdict:
        denials.record_denial(rt, principal, permission, verdict.reason, API_ORIGIN)
        raise HTTPException(status.HTTP_403_FORBIDDEN, verdict.reason)


# --- keyset cursors ------------------------------------------------------------------


def encode_cursor(values: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


# The largest id PostgreSQL's bigint holds: larger ones are refused before any query.
MAX_ROW_ID = 2**63 - 1
PathRowId = Annotated[int, Path(ge=1, le=MAX_ROW_ID)]


def row_id(value: object) -> int:
    """An id as typed or sent back in a form or cursor; ValueError unless it could exist."""
    number = int(str(value))
    if not 1 <= number <= MAX_ROW_ID:
        raise ValueError(f"{number} is not an id")
    return number


def decode_cursor(cursor: str, keys: tuple[str, ...]) -> dict[str, Any]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        values = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "invalid cursor") from None
    if not isinstance(values, dict) or set(values) != set(keys):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "invalid cursor")
    return values


EXPORTS_BUSY_RETRY_SECONDS = 30


def take_export_slot(request: Request) -> Callable[[], None] | None:
    """The slot's release, or None when EXPORTS_AT_ONCE exports are streaming already."""
    slots: ExportSlots = request.app.state.export_slots
    return slots.give_back if slots.take() else None


class _DownloadEnd:
    """Closes the rows (ending their transaction) and gives the slot back, once."""

    def __init__(self, chunks: Iterator[str], release: Callable[[], None]) -> None:
        self._chunks: Iterator[str] | None = chunks
        self._release = release
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            chunks, self._chunks = self._chunks, None
        if chunks is None:
            return
        try:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        finally:
            self._release()


class CsvDownload(StreamingResponse):
    """A CSV file sent as it is written. However the download ends (finished, the client
    gone, the server stopping) its rows are closed and its export slot given back at once,
    not whenever the garbage collector finds the suspended generator."""

    def __init__(self, name: str, chunks: Iterator[str], release: Callable[[], None]) -> None:
        filename = export_filename(name, datetime.now(UTC))
        super().__init__(
            chunks,
            media_type="text/csv; charset=utf-8",
            headers={
                "Content-Disposition": f'attachment; filename="{filename}"',
                "Cache-Control": "no-store",
            },
        )
        self._end = _DownloadEnd(chunks, release)
        weakref.finalize(self, self._end)  # a response never sent still gives its slot back

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._end)

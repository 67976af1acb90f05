"""Request-scoped dependencies shared by the API routers."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Path, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from core.auth import AuthError, user_from_access_token
from core.models import User
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


@dataclass(frozen=True)
class Caller:
    user: User
    principal: Principal


def current_caller(
    session: SessionDep,
    rt: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    try:
        user = user_from_access_token(session, rt.settings, credentials.credentials)
    except AuthError as exc:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            str(exc),
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        ) from None
    return Caller(user, users_repo.principal_for(session, user, rt.policy))


CallerDep = Annotated[Caller, Depends(current_caller)]


def origin_of(request: Request, channel: str) -> Origin:
    client = request.client.host if request.client else None
    return Origin(channel=channel, ip=client, device=request.headers.get("user-agent"))


def require(rt: Runtime, principal: Principal, permission: str) -> None:
    verdict = rt.policy.authorize(principal, permission)
    if not verdict:
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

"""API keys for integrations: issue, list, revoke. Only a person signed in manages keys
(a call made with a key is refused in api.deps)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request, status
from fastapi.concurrency import run_in_threadpool

from api.deps import MAX_ROW_ID, CallerDep, PathRowId, RuntimeDep, SessionDep, origin_of
from api.schemas import ApiKeyCreate, ApiKeyIssued, ApiKeyOut, Page
from core import api_keys
from core.api_keys import KeyRow, NewApiKey
from core.runtime import Runtime
from policies.snapshot import Principal

router = APIRouter(prefix="/api/v1", tags=["api-keys"])


def api_key_out(row: KeyRow, now: datetime) -> ApiKeyOut:
    key = row.key
    return ApiKeyOut(
        id=key.id,
        name=key.name,
        prefix=key.prefix,
        owner=row.owner,
        created_by=row.created_by,
        permissions=list(key.permissions),
        created_at=key.created_at,
        expires_at=key.expires_at,
        last_used_at=key.last_used_at,
        revoked_at=key.revoked_at,
        state=row.state(now),
    )


def _get(rt: Runtime, principal: Principal, key_id: int) -> ApiKeyOut:
    with rt.sessions() as session:
        return api_key_out(api_keys.visible(rt, session, principal, key_id), datetime.now(UTC))


@router.post("/api-keys", status_code=status.HTTP_201_CREATED, response_model=ApiKeyIssued)
async def create_api_key(body: ApiKeyCreate, request: Request, caller: CallerDep, rt: RuntimeDep):
    """Issue a key carrying some of the owner's permissions (never an `approve`) until
    `expires_at` (one year at most). The secret is in this answer only."""
    new = NewApiKey(
        name=body.name, expires_at=body.expires_at, permissions=body.permissions, owner=body.owner
    )
    issued = await run_in_threadpool(
        api_keys.create, rt, caller.principal, new, origin_of(request, "api")
    )
    shown = await run_in_threadpool(_get, rt, caller.principal, issued.key_id)
    return ApiKeyIssued(**shown.model_dump(), key=issued.secret)


@router.get("/api-keys", response_model=Page[ApiKeyOut])
def list_api_keys(
    caller: CallerDep,
    rt: RuntimeDep,
    session: SessionDep,
    everyone: bool = False,
    cursor: Annotated[int | None, Query(ge=1, le=MAX_ROW_ID)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
):
    """Your keys, newest first; `everyone` for holders of api_keys:manage."""
    rows = api_keys.listing(
        rt, session, caller.principal, everyone=everyone, before_id=cursor, limit=limit + 1
    )
    now = datetime.now(UTC)
    return Page[ApiKeyOut].from_rows(
        rows, limit, lambda row: api_key_out(row, now), lambda row: row.key.id
    )


@router.get("/api-keys/{key_id}", response_model=ApiKeyOut)
def get_api_key(key_id: PathRowId, caller: CallerDep, rt: RuntimeDep):
    return _get(rt, caller.principal, key_id)


@router.post("/api-keys/{key_id}/revoke", response_model=ApiKeyOut)
async def revoke_api_key(key_id: PathRowId, request: Request, caller: CallerDep, rt: RuntimeDep):
    """Revoke a key now: its next use is refused."""
    await run_in_threadpool(
        api_keys.revoke, rt, caller.principal, key_id, origin_of(request, "api")
    )
    return await run_in_threadpool(_get, rt, caller.principal, key_id)

"""Delegations API: an approver names a peer to decide in their place for a period."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from api.deps import MAX_ROW_ID, CallerDep, PathRowId, RuntimeDep, SessionDep, origin_of
from api.schemas import InputModel, Page
from core import delegation_service
from core.delegation_service import NewDelegation
from core.repositories.delegations import DelegationRow, DelegationState

router = APIRouter(prefix="/api/v1", tags=["delegations"])


class DelegationCreate(InputModel):
    delegate: str = Field(min_length=1, max_length=64, examples=["fin.manager2"])
    ends_at: datetime = Field(examples=["2026-12-01T18:00:00Z"])
    starts_at: datetime | None = Field(default=None, description="now when omitted")
    reason: str = Field(min_length=1, max_length=2000, examples=["annual leave"])
    delegator: str | None = Field(
        default=None,
        max_length=64,
        description="whose approvals; someone else's needs delegations:manage_all",
    )


class DelegationOut(BaseModel):
    id: int
    delegator: str
    delegate: str
    starts_at: datetime
    ends_at: datetime
    reason: str
    created_at: datetime
    revoked_at: datetime | None
    state: DelegationState


def delegation_out(row: DelegationRow, now: datetime) -> DelegationOut:
    d = row.delegation
    return DelegationOut(
        id=d.id,
        delegator=row.delegator,
        delegate=row.delegate,
        starts_at=d.starts_at,
        ends_at=d.ends_at,
        reason=d.reason,
        created_at=d.created_at,
        revoked_at=d.revoked_at,
        state=row.state(now),
    )


def _get(rt: RuntimeDep, caller: CallerDep, delegation_id: int) -> DelegationOut:
    with rt.sessions() as session:
        found = delegation_service.visible(rt, session, caller.principal, delegation_id)
        return delegation_out(found, datetime.now(UTC))


@router.post("/delegations", status_code=status.HTTP_201_CREATED, response_model=DelegationOut)
async def create_delegation(
    body: DelegationCreate, request: Request, caller: CallerDep, rt: RuntimeDep
):
    """Hand your approvals to a peer in your department until `ends_at` (90 days at most)."""
    new = NewDelegation(
        delegate=body.delegate,
        ends_at=body.ends_at,
        reason=body.reason,
        starts_at=body.starts_at,
        delegator=body.delegator,
    )
    created = await run_in_threadpool(
        delegation_service.create, rt, caller.principal, new, origin_of(request, "api")
    )
    return await run_in_threadpool(_get, rt, caller, created)


@router.get("/delegations", response_model=Page[DelegationOut])
def list_delegations(
    caller: CallerDep,
    rt: RuntimeDep,
    session: SessionDep,
    everyone: bool = False,
    cursor: Annotated[int | None, Query(ge=1, le=MAX_ROW_ID)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
):
    """Delegations you gave or received, newest first; `everyone` for managers."""
    rows = delegation_service.listing(
        rt, session, caller.principal, everyone=everyone, before_id=cursor, limit=limit + 1
    )
    now = datetime.now(UTC)
    return Page[DelegationOut].from_rows(
        rows, limit, lambda row: delegation_out(row, now), lambda row: row.delegation.id
    )


@router.get("/delegations/{delegation_id}", response_model=DelegationOut)
def get_delegation(delegation_id: PathRowId, caller: CallerDep, rt: RuntimeDep):
    return _get(rt, caller, delegation_id)


@router.post("/delegations/{delegation_id}/revoke", response_model=DelegationOut)
async def revoke_delegation(
    delegation_id: PathRowId, request: Request, caller: CallerDep, rt: RuntimeDep
):
    """End a delegation now, or cancel one that has not started."""
    await run_in_threadpool(
        delegation_service.revoke,
        rt,
        caller.principal,
        delegation_id,
        origin_of(request, "api"),
    )
    return await run_in_threadpool(_get, rt, caller, delegation_id)

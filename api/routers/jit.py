"""Just-in-time elevation API: request, renew and revoke temporary roles."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable
from datetime import UTC, datetime

from fastapi import APIRouter, Request, status
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from api.deps import CallerDep, RuntimeDep, SessionDep, origin_of
from api.schemas import InputModel, Page
from core import jit_service
from core.jit_service import GrantRow

router = APIRouter(prefix="/api/v1", tags=["jit"])


class ElevationCreate(InputModel):
    role: str = Field(min_length=1, max_length=64, examples=["risk.lead"])
    duration_hours: int = Field(examples=[4], description="1 to 72 hours from the approval")
    reason: str = Field(min_length=1, max_length=2000, examples=["covering the lead's shift"])


class ElevationRenew(InputModel):
    duration_hours: int = Field(examples=[4], description="hours from the renewal's approval")
    reason: str = Field(min_length=1, max_length=2000)


class ElevationRevoke(InputModel):
    reason: str = Field(default="", max_length=2000)


class ElevationOut(BaseModel):
    id: uuid.UUID
    username: str
    role: str
    reason: str
    status: str = Field(description="pending, active, expired, revoked or not_granted")
    requested_at: datetime
    granted_at: datetime | None
    expires_at: datetime | None
    seconds_left: int
    revoked_at: datetime | None
    revoked_by: str | None
    request_ids: list[uuid.UUID] = Field(description="the approvals: first, then renewals")
    pending_request_id: uuid.UUID | None


def elevation_out(row: GrantRow, now: datetime) -> ElevationOut:
    grant = row.grant
    return ElevationOut(
        id=grant.id,
        username=row.username,
        role=grant.role,
        reason=grant.reason,
        status=row.state(now),
        requested_at=grant.requested_at,
        granted_at=grant.granted_at,
        expires_at=grant.expires_at,
        seconds_left=row.seconds_left(now),
        revoked_at=grant.revoked_at,
        revoked_by=row.revoked_by,
        request_ids=list(grant.request_ids),
        pending_request_id=grant.pending_request_id,
    )


async def _answer(call: Awaitable[GrantRow]) -> ElevationOut:
    return elevation_out(await call, datetime.now(UTC))


@router.post("/jit", status_code=status.HTTP_201_CREATED, response_model=ElevationOut)
async def request_elevation(
    body: ElevationCreate, request: Request, caller: CallerDep, rt: RuntimeDep
):
    """Ask for a role for some hours; it starts when its approval chain approves."""
    return await _answer(
        jit_service.request_elevation(
            rt,
            caller.principal,
            body.role,
            body.duration_hours,
            body.reason,
            origin_of(request, "api"),
        )
    )


@router.get("/jit", response_model=Page[ElevationOut])
def list_elevations(caller: CallerDep, rt: RuntimeDep, session: SessionDep, everyone: bool = False):
    """Your elevations, newest first, history included; `everyone`: every one in force now
    (needs jit:manage)."""
    rows = (
        jit_service.everyone_active(rt, session, caller.principal)
        if everyone
        else jit_service.mine(session, caller.principal)
    )
    now = datetime.now(UTC)
    return Page[ElevationOut](items=[elevation_out(row, now) for row in rows], next=None)


@router.get("/jit/{grant_id}", response_model=ElevationOut)
async def get_elevation(grant_id: uuid.UUID, caller: CallerDep, rt: RuntimeDep):
    return await _answer(run_in_threadpool(jit_service.load, rt, caller.principal, grant_id))


@router.post("/jit/{grant_id}/renew", response_model=ElevationOut)
async def renew_elevation(
    grant_id: uuid.UUID, body: ElevationRenew, request: Request, caller: CallerDep, rt: RuntimeDep
):
    """Ask to extend an active elevation; approved again, it runs from that approval."""
    return await _answer(
        jit_service.renew(
            rt,
            caller.principal,
            grant_id,
            body.duration_hours,
            body.reason,
            origin_of(request, "api"),
        )
    )


@router.post("/jit/{grant_id}/revoke", response_model=ElevationOut)
async def revoke_elevation(
    grant_id: uuid.UUID, body: ElevationRevoke, request: Request, caller: CallerDep, rt: RuntimeDep
):
    """End an active elevation now: its holder, or a holder of jit:manage."""
    return await _answer(
        jit_service.revoke(rt, caller.principal, grant_id, body.reason, origin_of(request, "api"))
    )

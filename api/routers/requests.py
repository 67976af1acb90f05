"""Approval requests: create, list, read, decide, cancel. The task queue is in tasks.py."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.concurrency import run_in_threadpool

from api.deps import CallerDep, RuntimeDep, SessionDep, decode_cursor, encode_cursor, origin_of
from api.schemas import (
    CancelCreate,
    DecisionCreate,
    Page,
    RequestCreate,
    RequestOut,
    RequestSummary,
    request_out,
)
from core import request_service
from core.repositories import requests as requests_repo
from core.repositories.scope import EVERY_PLAYER, PlayerScope
from core.request_service import NewRequest
from workflows.contracts import TERMINAL_STATUSES

router = APIRouter(prefix="/api/v1", tags=["requests"])

STATUSES = sorted({"pending", "approved", *TERMINAL_STATUSES})
Limit = Annotated[int, Query(ge=1, le=200)]


def _detail(rt: RuntimeDep, request_id: uuid.UUID) -> RequestOut:
    with rt.sessions() as session:
        request = requests_repo.get(session, request_id)
        assert request is not None
        return request_out(session, request)


@router.post("/requests", status_code=status.HTTP_201_CREATED, response_model=RequestOut)
async def create_request(body: RequestCreate, request: Request, caller: CallerDep, rt: RuntimeDep):
    """Start an approval request for one action of the catalogue."""
    created = await request_service.submit(
        rt,
        caller.principal,
        NewRequest(body.action, body.target, body.params, body.reason),
        origin_of(request, "api"),
    )
    return await run_in_threadpool(_detail, rt, created.id)


@router.get("/requests", response_model=Page[RequestSummary])
def list_requests(
    caller: CallerDep,
    rt: RuntimeDep,
    session: SessionDep,
    status_filter: Annotated[str | None, Query(alias="status")] = None,
    action: str | None = None,
    scope: Annotated[str, Query(pattern="^(mine|all)$")] = "mine",
    cursor: str | None = None,
    limit: Limit = 50,
):
    """Newest first. `scope=all` needs the requests:view_all permission."""
    if status_filter is not None and status_filter not in STATUSES:
        raise HTTPException(422, f"status must be one of {', '.join(STATUSES)}")
    if scope == "all" and not rt.policy.authorize(caller.principal, "requests:view_all"):
        raise HTTPException(403, "your roles do not grant 'requests:view_all'")
    before = None
    if cursor:
        values = decode_cursor(cursor, ("created_at", "id"))
        try:
            before = requests_repo.RequestCursor(
                datetime.fromisoformat(values["created_at"]), uuid.UUID(values["id"])
            )
        except (TypeError, ValueError, AttributeError):
            raise HTTPException(400, "invalid cursor") from None
    rows = requests_repo.request_page(
        session,
        requester_id=None if scope == "all" else caller.user.id,
        # Everyone's requests narrow to the caller's data scope; their own are all theirs.
        scope=(
            PlayerScope.of(request_service.data_scope(rt, caller.principal))
            if scope == "all"
            else EVERY_PLAYER
        ),
        status=status_filter,
        action=action,
        before=before,
        limit=limit + 1,
    )
    items = [
        RequestSummary(
            id=r.id,
            action=r.action,
            target=r.target,
            amount=r.amount,
            requester=username,
            status=r.status,
            created_at=r.created_at,
            updated_at=r.updated_at,
        )
        for r, username in rows[:limit]
    ]
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1][0]
        next_cursor = encode_cursor({"created_at": last.created_at.isoformat(), "id": str(last.id)})
    return Page[RequestSummary](items=items, next=next_cursor)


@router.get("/requests/{request_id}", response_model=RequestOut)
def get_request(request_id: uuid.UUID, caller: CallerDep, rt: RuntimeDep, session: SessionDep):
    request = request_service.visible_request(session, rt, caller.principal, request_id)
    return request_out(session, request)


@router.post("/requests/{request_id}/decision", response_model=RequestOut)
async def decide(
    request_id: uuid.UUID, body: DecisionCreate, request: Request, caller: CallerDep, rt: RuntimeDep
):
    """Approve or reject the request's current step."""
    await request_service.decide(
        rt,
        caller.principal,
        request_id,
        body.decision,
        body.comment,
        origin_of(request, "api"),
        totp=body.totp,
    )
    return await run_in_threadpool(_detail, rt, request_id)


@router.post("/requests/{request_id}/cancel", response_model=RequestOut)
async def cancel(
    request_id: uuid.UUID, body: CancelCreate, request: Request, caller: CallerDep, rt: RuntimeDep
):
    """Withdraw one's own pending request."""
    await request_service.cancel(
        rt, caller.principal, request_id, body.reason, origin_of(request, "api")
    )
    return await run_in_threadpool(_detail, rt, request_id)

"""Task queue API: my queue, my team's, claim, release, bulk decisions."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from api.deps import (
    CallerDep,
    PathRowId,
    RuntimeDep,
    SessionDep,
    decode_cursor,
    encode_cursor,
    origin_of,
    row_id,
)
from api.schemas import InputModel, Page, RowId, TaskOut, task_out
from core import task_service
from core.repositories import requests as requests_repo
from core.request_service import MAX_COMMENT
from core.task_service import MAX_BULK_ITEMS, BulkRefused

router = APIRouter(prefix="/api/v1", tags=["tasks"])

Limit = Annotated[int, Query(ge=1, le=200)]


class BulkDecisionCreate(InputModel):
    task_ids: list[RowId] = Field(min_length=1, max_length=MAX_BULK_ITEMS)
    decision: Literal["approve", "reject"]
    comment: str = Field(default="", max_length=MAX_COMMENT)


class BulkItemOut(BaseModel):
    task_id: int
    request_id: uuid.UUID
    decided: bool
    status: str | None = None  # the request's status after the decision
    error_status: int | None = None  # set when a late refusal (a race) stopped this item
    detail: str | None = None


class BulkDecisionOut(BaseModel):
    decided: int
    refused: int
    items: list[BulkItemOut]


def _cursor(cursor: str | None) -> requests_repo.TaskCursor | None:
    if not cursor:
        return None
    values = decode_cursor(cursor, ("due_at", "id"))
    try:
        return requests_repo.TaskCursor(
            datetime.fromisoformat(values["due_at"]), row_id(values["id"])
        )
    except (TypeError, ValueError, AttributeError):
        raise HTTPException(400, "invalid cursor") from None


@router.get("/tasks", response_model=Page[TaskOut])
def list_tasks(
    caller: CallerDep,
    rt: RuntimeDep,
    session: SessionDep,
    scope: str = "mine",
    action: str | None = None,
    min_amount: str | None = None,
    max_amount: str | None = None,
    sla: str | None = None,
    older_than: Annotated[str | None, Query(description="open at least this long: 30m, 4h")] = None,
    claim: str | None = None,
    cursor: str | None = None,
    limit: Limit = 50,
):
    """Due soonest first. `scope=mine`: steps the caller may decide now (those another
    approver has taken are included, with `claimed_by`); `scope=team`: steps any member of
    the caller's team could decide, or that a member holds."""
    after = _cursor(cursor)
    filters = task_service.parse_filters(
        rt,
        action=action,
        min_amount=min_amount,
        max_amount=max_amount,
        sla=sla,
        older_than=older_than,
        claim=claim,
    )
    rows = task_service.queue_rows(
        rt, session, caller.user, caller.principal, scope, filters, after, limit + 1
    )
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1].task
        assert last.due_at is not None
        next_cursor = encode_cursor({"due_at": last.due_at.isoformat(), "id": last.id})
    return Page[TaskOut](items=[task_out(row) for row in rows[:limit]], next=next_cursor)


def _task(rt: RuntimeDep, task_id: int) -> TaskOut:
    with rt.sessions() as session:
        row = requests_repo.task_row(session, task_id)
        if row is None:  # decided or expired between the change and this read
            raise HTTPException(409, "the task closed meanwhile; it is no longer open")
        return task_out(row)


@router.post("/tasks/{task_id}/claim", response_model=TaskOut)
async def claim_task(task_id: PathRowId, request: Request, caller: CallerDep, rt: RuntimeDep):
    """Take a task you could decide now; others see it as taken by you. 409 if someone
    else holds it."""
    await run_in_threadpool(
        task_service.claim, rt, caller.principal, task_id, origin_of(request, "api")
    )
    return await run_in_threadpool(_task, rt, task_id)


@router.post("/tasks/{task_id}/release", response_model=TaskOut)
async def release_task(task_id: PathRowId, request: Request, caller: CallerDep, rt: RuntimeDep):
    """Give a task back. Only its holder, or a holder of `tasks:reassign`, may."""
    await run_in_threadpool(
        task_service.release, rt, caller.principal, task_id, origin_of(request, "api")
    )
    return await run_in_threadpool(_task, rt, task_id)


@router.post(
    "/tasks/bulk-decision",
    response_model=BulkDecisionOut,
    responses={422: {"description": "some item cannot be decided; `items` lists each"}},
)
async def bulk_decision(
    body: BulkDecisionCreate, request: Request, caller: CallerDep, rt: RuntimeDep
):
    """Approve or reject several tasks with one comment, for actions whose policy allows
    bulk decisions. Every item is checked first: if any fails, nothing is decided."""
    try:
        outcomes = await task_service.bulk_decide(
            rt,
            caller.principal,
            body.task_ids,
            body.decision,
            body.comment,
            origin_of(request, "api"),
        )
    except BulkRefused as refused:
        return JSONResponse(
            {
                "detail": refused.detail,
                "items": [
                    {"task_id": p.task_id, "status": p.status, "detail": p.detail}
                    for p in refused.problems
                ],
            },
            status_code=422,
        )
    items = [
        BulkItemOut(
            task_id=o.task_id,
            request_id=o.request_id,
            decided=o.decided,
            status=o.request_status,
            error_status=o.error_status,
            detail=o.detail,
        )
        for o in outcomes
    ]
    decided = sum(1 for item in items if item.decided)
    return BulkDecisionOut(decided=decided, refused=len(items) - decided, items=items)

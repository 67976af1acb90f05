"""The task queue pages: mine and my team's, claim and release, bulk decisions."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session

from api.deps import PathRowId, RuntimeDep, origin_of, row_id
from api.schemas import TaskOut, task_out
from core import request_service, task_service
from core.repositories import requests as requests_repo
from core.repositories.requests import TaskFilters, TaskRow
from core.repositories.scope import PlayerScope
from core.request_service import RequestError
from core.runtime import Runtime
from core.task_service import BulkRefused
from web.routes import (
    FormDep,
    Viewer,
    ViewerDep,
    WebSessionDep,
    base_context,
    is_htmx,
    render,
    render_decided_row,
)

router = APIRouter(include_in_schema=False)

QUEUE_LIMIT = 200
FILTER_FIELDS = ("action", "min_amount", "max_amount", "sla", "older_than", "claim")
VIEWS = {"mine": "My queue", "team": "My team's queue"}


@dataclass(frozen=True)
class RowView:
    """One row as the viewer sees it: the task and what they may do with it."""

    task: TaskOut
    can_decide: bool
    can_bulk: bool
    taken_by_other: bool
    can_release: bool


def _row_views(
    session: Session, rt: Runtime, viewer: Viewer, view: str, rows: list[TaskRow]
) -> list[RowView]:
    if view == "mine":
        decidable = {row.task.id for row in rows}
    else:  # what of the team's queue is also in mine
        mine = requests_repo.task_queue(
            session,
            user_id=viewer.user.id,
            roles=request_service.decider_roles(session, viewer.principal),
            team=viewer.user.team,
            filters=TaskFilters(task_ids=[row.task.id for row in rows]),
            scope=PlayerScope.of(request_service.data_scope(rt, viewer.principal)),
            limit=len(rows) or 1,
        )
        decidable = {row.task.id for row in mine}
    reassigns = bool(rt.policy.authorize(viewer.principal, task_service.REASSIGN_PERMISSION))
    views = []
    for row in rows:
        holder = row.task.claimed_by_id
        taken_by_other = holder is not None and holder != viewer.user.id
        can_decide = row.task.id in decidable
        views.append(
            RowView(
                task=task_out(row),
                can_decide=can_decide,
                can_bulk=can_decide
                and not taken_by_other
                and task_service.bulk_allowed(rt, row.request),
                taken_by_other=taken_by_other,
                can_release=holder is not None and (not taken_by_other or reassigns),
            )
        )
    return views


def _view_of(value: str | None) -> str:
    return value if value in VIEWS else "mine"


def _queue_context(
    request: Request, session: Session, rt: Runtime, viewer: Viewer
) -> tuple[dict[str, Any], int]:
    params = request.query_params
    view = _view_of(params.get("view"))
    values = {name: params.get(name, "").strip() for name in FILTER_FIELDS}
    query = urlencode({"view": view, **{k: v for k, v in values.items() if v}})
    context: dict[str, Any] = {
        **base_context(viewer, "tasks"),
        "view": view,
        "views": VIEWS,
        "values": values,
        "query": query,
        "actions": rt.policy.actions,
        "rows": [],
        "errors": {},
        "queue_error": None,
    }
    try:
        filters = task_service.parse_filters(rt, **values)
        rows = task_service.queue_rows(
            rt, session, viewer.user, viewer.principal, view, filters, limit=QUEUE_LIMIT
        )
    except RequestError as err:
        context["errors"] = err.fields
        context["queue_error"] = err.detail
        return context, err.status
    context["rows"] = _row_views(session, rt, viewer, view, rows)
    return context, 200


@router.get("/tasks")
def my_tasks(
    request: Request, viewer: ViewerDep, rt: RuntimeDep, session: WebSessionDep
) -> Response:
    context, status_code = _queue_context(request, session, rt, viewer)
    context["notifications"] = requests_repo.notifications_for(
        session, user_id=viewer.user.id, roles=viewer.principal.roles
    )
    block = (
        "task_table"
        if is_htmx(request) and request.headers.get("HX-Target") == "task-table"
        else None
    )
    return render(request, "tasks.html", context, status_code=status_code, block=block)


def _row(
    request: Request,
    session: Session,
    rt: Runtime,
    viewer: Viewer,
    task_id: PathRowId,
    view: str,
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    """The row of one task: open (with who holds it), or what became of its request."""
    try:
        rows = task_service.queue_rows(
            rt,
            session,
            viewer.user,
            viewer.principal,
            view,
            TaskFilters(task_ids=[task_id]),
            limit=1,
        )
    except RequestError:
        rows = []
    if not rows:
        task = requests_repo.get_task(session, task_id)
        try:
            if task is None:
                raise RequestError(404, "task not found")
            request_service.visible_request(session, rt, viewer.principal, task.request_id)
        except RequestError:  # the same answer whether it is absent or not yours to see
            return render(request, "_toast.html", {"message": "task not found"}, 404)
        return render_decided_row(request, session, rt, viewer, task.request_id, error, status_code)
    context = {
        **base_context(viewer, "tasks"),
        "view": view,
        "rows": _row_views(session, rt, viewer, view, rows),
        "row_error": error,
    }
    return render(request, "tasks.html", context, status_code=status_code, block="task_rows")


@router.get("/tasks/{task_id}/row")
def task_row(
    request: Request,
    task_id: PathRowId,
    viewer: ViewerDep,
    rt: RuntimeDep,
    session: WebSessionDep,
    view: str = "mine",
) -> Response:
    """One row following its task live (someone took it, decided it, it executed)."""
    return _row(request, session, rt, viewer, task_id, _view_of(view))


async def _claim_command(
    request: Request,
    task_id: PathRowId,
    viewer: Viewer,
    form: dict[str, str],
    rt: Runtime,
    command: Any,
) -> Response:
    error, status_code = None, 200
    try:
        await asyncio.to_thread(command, rt, viewer.principal, task_id, origin_of(request, "web"))
    except RequestError as err:
        error, status_code = err.detail, err.status

    def rerender() -> Response:
        with rt.sessions() as session:
            view = _view_of(form.get("view"))
            return _row(request, session, rt, viewer, task_id, view, error, status_code)

    return await asyncio.to_thread(rerender)


@router.post("/tasks/{task_id}/claim")
async def claim(
    request: Request, task_id: PathRowId, viewer: ViewerDep, form: FormDep, rt: RuntimeDep
) -> Response:
    return await _claim_command(request, task_id, viewer, form, rt, task_service.claim)


@router.post("/tasks/{task_id}/release")
async def release(
    request: Request, task_id: PathRowId, viewer: ViewerDep, form: FormDep, rt: RuntimeDep
) -> Response:
    return await _claim_command(request, task_id, viewer, form, rt, task_service.release)


@router.post("/tasks/bulk-decision")
async def bulk_decision(
    request: Request, viewer: ViewerDep, form: FormDep, rt: RuntimeDep
) -> Response:
    """Decide the ticked tasks with one comment, or say which of them cannot be."""
    posted = await request.form()  # cached: FormDep already read it, with the CSRF check
    raw_ids = [str(value) for value in posted.getlist("task_id")]
    context: dict[str, Any] = {"bulk_error": None, "problems": [], "outcomes": []}
    status_code = 200
    try:
        task_ids = [row_id(value) for value in raw_ids]
    except ValueError:
        context["bulk_error"] = "the selection is not a list of tasks; reload the page"
        return render(request, "tasks.html", context, status_code=422, block="bulk_result")
    try:
        context["outcomes"] = await task_service.bulk_decide(
            rt,
            viewer.principal,
            task_ids,
            form.get("decision", ""),
            form.get("comment", ""),
            origin_of(request, "web"),
        )
    except BulkRefused as refused:
        context["bulk_error"] = refused.detail
        context["problems"] = refused.problems
        status_code = 422
    except RequestError as err:
        context["bulk_error"] = err.detail
        status_code = err.status
    return render(request, "tasks.html", context, status_code=status_code, block="bulk_result")

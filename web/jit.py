"""Just-in-time elevation pages: my grants, every active elevation, history."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from activities.jit import OPEN_STATUSES
from api.deps import RuntimeDep, origin_of
from core import jit_service
from core.jit_service import GrantRow
from core.request_service import RequestError
from core.runtime import Runtime
from web.routes import FormDep, Viewer, ViewerDep, base_context, is_htmx, render

router = APIRouter(include_in_schema=False)


def time_left(seconds: int) -> str:
    """'2h 05m left' in words, for people and screen readers alike."""
    hours, rest = divmod(max(seconds, 0), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m left"
    return f"{minutes}m {secs:02d}s left" if minutes else f"{secs}s left"


def _context(rt: Runtime, viewer: Viewer, values: dict[str, str]) -> dict[str, Any]:
    now = datetime.now(UTC)
    manages = jit_service.manages(rt, viewer.principal)
    with rt.sessions() as session:
        mine = jit_service.mine(session, viewer.principal)
        everyone = jit_service.everyone_active(rt, session, viewer.principal) if manages else []
    current = [row for row in mine if row.state(now) in OPEN_STATUSES]
    return {
        **base_context(viewer, "jit"),
        "now": now,
        "current": current,
        "history": [row for row in mine if row not in current],
        "everyone": everyone,
        "manages": manages,
        "roles": [r for r in jit_service.requestable_roles(rt) if r not in viewer.principal.roles],
        "time_left": time_left,
        "values": values,
        "errors": {},
    }


def _page(
    request: Request,
    rt: Runtime,
    viewer: Viewer,
    values: dict[str, str],
    error: RequestError | None = None,
) -> Response:
    context = _context(rt, viewer, values)
    if error is not None:
        context["form_error"] = error.detail
        context["errors"] = error.fields
    block = "grants" if is_htmx(request) and error is None else None
    return render(
        request, "jit.html", context, status_code=error.status if error else 200, block=block
    )


@router.get("/jit")
async def jit_page(request: Request, viewer: ViewerDep, rt: RuntimeDep) -> Response:
    return await asyncio.to_thread(_page, request, rt, viewer, {})


def _grant_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise RequestError(404, "elevation not found") from None


async def _act(
    request: Request,
    rt: Runtime,
    viewer: Viewer,
    values: dict[str, str],
    call: Callable[[], Awaitable[object]],
) -> Response:
    """Run a change; back to the page, or the page again with the refusal inline."""
    try:
        await call()
    except RequestError as err:
        return await asyncio.to_thread(_page, request, rt, viewer, values, err)
    return RedirectResponse("/jit", status_code=303)


@router.post("/jit")
async def request_elevation(
    request: Request, viewer: ViewerDep, form: FormDep, rt: RuntimeDep
) -> Response:
    values = {key: form.get(key, "").strip() for key in ("role", "duration_hours", "reason")}
    return await _act(
        request,
        rt,
        viewer,
        values,
        lambda: jit_service.request_elevation(
            rt,
            viewer.principal,
            values["role"],
            values["duration_hours"],
            values["reason"],
            origin_of(request, "web"),
        ),
    )


@router.post("/jit/{grant_id}/renew")
async def renew_elevation(
    request: Request, grant_id: str, viewer: ViewerDep, form: FormDep, rt: RuntimeDep
) -> Response:
    values = {key: form.get(key, "").strip() for key in ("duration_hours", "reason")}

    async def renew() -> GrantRow:
        return await jit_service.renew(
            rt,
            viewer.principal,
            _grant_id(grant_id),
            values["duration_hours"],
            values["reason"],
            origin_of(request, "web"),
        )

    return await _act(request, rt, viewer, {}, renew)


@router.post("/jit/{grant_id}/revoke")
async def revoke_elevation(
    request: Request, grant_id: str, viewer: ViewerDep, form: FormDep, rt: RuntimeDep
) -> Response:
    async def revoke() -> GrantRow:
        return await jit_service.revoke(
            rt,
            viewer.principal,
            _grant_id(grant_id),
            form.get("reason", ""),
            origin_of(request, "web"),
        )

    return await _act(request, rt, viewer, {}, revoke)

"""Role administration pages: roles as data, a what-if before every change."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from api.deps import RuntimeDep, origin_of
from core import role_admin
from core.request_service import RequestError
from core.role_admin import WhatIf
from core.runtime import Runtime
from policies.snapshot import EVERY
from web.routes import FormDep, Viewer, ViewerDep, base_context, env, is_htmx, render

router = APIRouter(include_in_schema=False)

ACTIVE = "role_admin"


env.globals["scope_text"] = role_admin.scope_text


def _refused(request: Request, viewer: Viewer, error: RequestError) -> Response:
    context = {**base_context(viewer, ACTIVE), "message": error.detail}
    return render(request, "error.html", context, status_code=error.status)


@router.get("/admin/roles")
async def roles_page(request: Request, viewer: ViewerDep, rt: RuntimeDep) -> Response:
    try:
        rows = await asyncio.to_thread(role_admin.roles_with_versions, rt, viewer.principal)
    except RequestError as err:
        return _refused(request, viewer, err)
    context = {
        **base_context(viewer, ACTIVE),
        "rows": rows,
        "can_edit": bool(rt.policy.authorize(viewer.principal, role_admin.EDIT)),
    }
    return render(request, "role_admin.html", context)


def _values_of(definition: Any) -> dict[str, Any]:
    """The edit form's values for a definition."""
    scope = definition.scope
    return {
        "workspaces": list(definition.workspaces),
        "permissions": "\n".join(definition.permissions),
        "all_regions": scope.regions == EVERY,
        "regions": [] if scope.regions == EVERY else list(scope.regions),
        "all_segments": scope.segments == EVERY,
        "segments": [] if scope.segments == EVERY else list(scope.segments),
        "max_amount": "" if scope.max_amount is None else str(scope.max_amount),
        "reason": "",
    }


async def _posted(request: Request) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the form's values as typed, the changes they propose)."""
    form = await request.form()  # FormDep has read and CSRF-checked it already
    values: dict[str, Any] = {
        "workspaces": [str(v) for v in form.getlist("workspaces")],
        "permissions": str(form.get("permissions", "")),
        "all_regions": form.get("all_regions") == "*",
        "regions": [str(v) for v in form.getlist("regions")],
        "all_segments": form.get("all_segments") == "*",
        "segments": [str(v) for v in form.getlist("segments")],
        "max_amount": str(form.get("max_amount", "")).strip(),
        "reason": str(form.get("reason", "")),
    }
    changes = {
        "workspaces": values["workspaces"],
        "permissions": [
            line.strip() for line in values["permissions"].splitlines() if line.strip()
        ],
        "scope": {
            "regions": EVERY if values["all_regions"] else values["regions"],
            "segments": EVERY if values["all_segments"] else values["segments"],
            "max_amount": values["max_amount"] or None,
        },
    }
    return values, changes


def _field_errors(fields: dict[str, str]) -> dict[str, list[str]]:
    """Messages per form control: 'permissions.3' and 'permissions' both go to permissions."""
    grouped: dict[str, list[str]] = {}
    for key, message in fields.items():
        control = ".".join(part for part in key.split(".") if not part.isdigit())
        grouped.setdefault(control.replace("scope.", ""), []).append(message)
    return grouped


def _edit_page(
    request: Request,
    rt: Runtime,
    viewer: Viewer,
    role: str,
    values: dict[str, Any] | None = None,
    result: WhatIf | None = None,
    error: RequestError | None = None,
) -> Response:
    try:
        summary = role_admin.role_summary(rt, viewer.principal, role)
        history = role_admin.history(rt, viewer.principal, role)
    except RequestError as err:
        return _refused(request, viewer, err)
    catalogue = rt.policy.roles
    context = {
        **base_context(viewer, ACTIVE),
        "role": summary,
        "history": history,
        "values": values or _values_of(summary.definition),
        "workspaces": catalogue.workspaces,
        "regions": catalogue.regions,
        "segments": catalogue.segments,
        "can_edit": bool(rt.policy.authorize(viewer.principal, role_admin.EDIT)),
        "what_if": result,
        "form_error": error.detail if error else None,
        "errors": _field_errors(error.fields) if error else {},
        "htmx": is_htmx(request),
    }
    status_code = error.status if error else 200
    block = "what_if" if is_htmx(request) else None
    return render(request, "role_admin_edit.html", context, status_code=status_code, block=block)


@router.get("/admin/roles/{role}")
async def edit_page(request: Request, role: str, viewer: ViewerDep, rt: RuntimeDep) -> Response:
    return await asyncio.to_thread(_edit_page, request, rt, viewer, role)


@router.post("/admin/roles/{role}/what-if")
async def what_if(
    request: Request, role: str, viewer: ViewerDep, form: FormDep, rt: RuntimeDep
) -> Response:
    values, changes = await _posted(request)

    def answer() -> Response:
        try:
            result = role_admin.what_if(rt, viewer.principal, role, changes)
        except RequestError as err:
            return _edit_page(request, rt, viewer, role, values, error=err)
        return _edit_page(request, rt, viewer, role, values, result)

    return await asyncio.to_thread(answer)


@router.post("/admin/roles/{role}/proposals")
async def propose(
    request: Request, role: str, viewer: ViewerDep, form: FormDep, rt: RuntimeDep
) -> Response:
    values, changes = await _posted(request)
    try:
        proposal = await role_admin.propose(
            rt, viewer.principal, role, changes, values["reason"], origin_of(request, "web")
        )
    except RequestError as err:
        return await asyncio.to_thread(_edit_page, request, rt, viewer, role, values, None, err)
    return RedirectResponse(f"/requests/{proposal.request.id}", status_code=303)

"""API key pages: issue a read-only key for a BI tool (the secret shown once), see when
each was last used, revoke. Holders of api_keys:manage see and revoke everyone's."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from starlette.datastructures import FormData

from api.deps import PathRowId, RuntimeDep, origin_of
from core import api_keys
from core.api_keys import KEY_VERBS, MANAGE, IssuedKey, NewApiKey
from core.request_service import RequestError
from core.runtime import Runtime
from web.routes import FormDep, Viewer, ViewerDep, base_context, csrf_checked_form, render

router = APIRouter(include_in_schema=False)
LIST_SIZE = 100
LIFETIMES_DAYS = (7, 30, 90, 180, 365)
DEFAULT_LIFETIME_DAYS = 90


def _key_permissions(rt: Runtime, viewer: Viewer) -> list[str]:
    """What a key of this person's may carry: the view and export permissions they hold."""
    resources = rt.policy.roles.resources
    wanted = (
        f"{name}:{verb}"
        for name in sorted(resources)
        for verb in KEY_VERBS
        if verb in resources[name].verbs
    )
    return [p for p in wanted if rt.policy.authorize(viewer.principal, p)]


def _page(
    request: Request,
    rt: Runtime,
    viewer: Viewer,
    values: dict[str, Any],
    error: RequestError | None = None,
    issued: IssuedKey | None = None,
) -> Response:
    manages_all = bool(rt.policy.authorize(viewer.principal, MANAGE))
    with rt.sessions() as session:
        mine = api_keys.listing(
            rt, session, viewer.principal, everyone=False, before_id=None, limit=LIST_SIZE
        )
        others = (
            api_keys.listing(
                rt,
                session,
                viewer.principal,
                everyone=True,
                before_id=None,
                limit=LIST_SIZE + 1,
                others_in_force=True,
            )
            if manages_all
            else []
        )
    context = {
        **base_context(viewer, "api_keys"),
        "now": datetime.now(UTC),
        "mine": mine,
        "others": others[:LIST_SIZE],
        "more_others": len(others) > LIST_SIZE,
        "manages_all": manages_all,
        "permissions": _key_permissions(rt, viewer),
        "lifetimes": LIFETIMES_DAYS,
        "values": values,
        "errors": error.fields if error else {},
        "form_error": error.detail if error else None,
        "issued": issued,
    }
    status_code = error.status if error else (201 if issued else 200)
    response = render(request, "api_keys.html", context, status_code=status_code)
    if issued is not None:  # the secret: never kept by a browser or proxy cache
        response.headers["Cache-Control"] = "no-store"
    return response


@router.get("/account/api-keys")
async def api_keys_page(request: Request, viewer: ViewerDep, rt: RuntimeDep) -> Response:
    return await asyncio.to_thread(_page, request, rt, viewer, {})


def _lifetime(raw: str) -> timedelta:
    try:
        days = int(raw)
    except ValueError:
        days = 0
    if days not in LIFETIMES_DAYS:
        choices = ", ".join(map(str, LIFETIMES_DAYS))
        raise RequestError(422, f"lifetime: choose {choices} days", {"lifetime": "not offered"})
    return timedelta(days=days)


@router.post("/account/api-keys")
async def create_api_key(request: Request, viewer: ViewerDep, rt: RuntimeDep) -> Response:
    await csrf_checked_form(request, viewer)
    form: FormData = await request.form()  # read again for the repeated permissions field
    values: dict[str, Any] = {
        "name": str(form.get("name", "")).strip(),
        "lifetime": str(form.get("lifetime", DEFAULT_LIFETIME_DAYS)),
        "owner": str(form.get("owner", "")).strip(),
        "permissions": [str(p) for p in form.getlist("permissions")],
    }

    def create() -> Response:
        try:
            new = NewApiKey(
                name=values["name"],
                expires_at=datetime.now(UTC) + _lifetime(values["lifetime"]),
                permissions=values["permissions"],
                owner=values["owner"] or None,
            )
            issued = api_keys.create(rt, viewer.principal, new, origin_of(request, "web"))
        except RequestError as err:
            return _page(request, rt, viewer, values, err)
        return _page(request, rt, viewer, {}, issued=issued)

    return await asyncio.to_thread(create)


@router.post("/account/api-keys/{key_id}/revoke")
async def revoke_api_key(
    request: Request, key_id: PathRowId, viewer: ViewerDep, form: FormDep, rt: RuntimeDep
) -> Response:
    def revoke() -> Response:
        try:
            api_keys.revoke(rt, viewer.principal, key_id, origin_of(request, "web"))
        except RequestError as err:
            return _page(request, rt, viewer, {}, err)
        return RedirectResponse("/account/api-keys", status_code=303)

    return await asyncio.to_thread(revoke)

"""Delegation pages: name a peer to approve in your place for a period, see and revoke."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from api.deps import PathRowId, RuntimeDep, origin_of
from core import delegation_service
from core.delegation_service import MANAGE_ALL, NewDelegation
from core.models import User
from core.request_service import RequestError
from core.runtime import Runtime
from core.times import parse_utc
from web.routes import FormDep, Viewer, ViewerDep, base_context, render

router = APIRouter(include_in_schema=False)
LIST_SIZE = 100


def _context(rt: Runtime, viewer: Viewer, values: dict[str, str]) -> dict[str, Any]:
    now = datetime.now(UTC)
    manages_all = bool(rt.policy.authorize(viewer.principal, MANAGE_ALL))
    with rt.sessions() as session:
        me = session.get(User, viewer.user.id)
        assert me is not None
        rows = delegation_service.listing(
            rt, session, viewer.principal, everyone=manages_all, before_id=None, limit=LIST_SIZE
        )
        peers = delegation_service.peers(rt, session, me)
    mine = viewer.user.username
    return {
        **base_context(viewer, "delegations"),
        "now": now,
        "received": [r for r in rows if r.delegate == mine and r.state(now) != "ended"],
        "given": [r for r in rows if r.delegator == mine],
        "others": [r for r in rows if mine not in (r.delegator, r.delegate)],
        "manages_all": manages_all,
        "peers": peers,
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
    return render(request, "delegations.html", context, status_code=error.status if error else 200)


@router.get("/delegations")
async def delegations_page(request: Request, viewer: ViewerDep, rt: RuntimeDep) -> Response:
    return await asyncio.to_thread(_page, request, rt, viewer, {})


def _parse_utc(value: str, field_name: str, required: bool) -> datetime | None:
    if not value.strip():
        if required:
            raise RequestError(
                422, f"{field_name.replace('_', ' ')} is required", {field_name: "required"}
            )
        return None
    try:
        return parse_utc(value)
    except ValueError:
        raise RequestError(
            422,
            f"{field_name.replace('_', ' ')} must be a date and time",
            {field_name: "not a time"},
        ) from None


@router.post("/delegations")
async def create_delegation(
    request: Request, viewer: ViewerDep, form: FormDep, rt: RuntimeDep
) -> Response:
    values = {
        key: form.get(key, "").strip()
        for key in ("delegate", "starts_at", "ends_at", "reason", "delegator")
    }

    def create() -> Response:
        try:
            ends_at = _parse_utc(values["ends_at"], "ends_at", required=True)
            assert ends_at is not None
            new = NewDelegation(
                delegate=values["delegate"],
                ends_at=ends_at,
                reason=values["reason"],
                starts_at=_parse_utc(values["starts_at"], "starts_at", required=False),
                delegator=values["delegator"] or None,
            )
            delegation_service.create(rt, viewer.principal, new, origin_of(request, "web"))
        except RequestError as err:
            return _page(request, rt, viewer, values, err)
        return RedirectResponse("/delegations", status_code=303)

    return await asyncio.to_thread(create)


@router.post("/delegations/{delegation_id}/revoke")
async def revoke_delegation(
    request: Request, delegation_id: PathRowId, viewer: ViewerDep, form: FormDep, rt: RuntimeDep
) -> Response:
    def revoke() -> Response:
        try:
            delegation_service.revoke(
                rt, viewer.principal, delegation_id, origin_of(request, "web")
            )
        except RequestError as err:
            return _page(request, rt, viewer, {}, err)
        return RedirectResponse("/delegations", status_code=303)

    return await asyncio.to_thread(revoke)

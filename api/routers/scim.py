"""SCIM 2.0 provisioning: Users and Groups for an identity provider (RFC 7644).

Off (404) unless SCIM_TOKEN is set; the provider sends that token as its bearer token.
Every refusal is in SCIM's error schema, and writes nothing.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.routing import APIRoute
from starlette.responses import JSONResponse

from api.deps import RuntimeDep, SessionDep, origin_of
from core import scim
from core.identity import identity_map_of
from core.repositories import users as users_repo
from core.scim import MEDIA_TYPE, ScimError


class _ScimRoute(APIRoute):
    """Turns a ScimError (from the route or its dependencies) into SCIM's error body."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except ScimError as refused:
                headers = (
                    {"WWW-Authenticate": 'Bearer realm="scim"'} if refused.status == 401 else None
                )
                return JSONResponse(
                    refused.body(), refused.status, headers=headers, media_type=MEDIA_TYPE
                )

        return answer


def _scim_provisioner(request: Request, rt: RuntimeDep) -> scim.Provisioner:
    """The identity provider, known by SCIM_TOKEN (compared in constant time)."""
    expected = rt.settings.scim_token
    if expected is None or not expected.get_secret_value():
        raise ScimError(404, "SCIM provisioning is not enabled here (SCIM_TOKEN is not set)")
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode(), expected.get_secret_value().encode()
    ):
        raise ScimError(401, "a valid SCIM bearer token is required")
    return scim.Provisioner(
        mapping=identity_map_of(rt),
        departments=rt.policy.roles.departments,
        issuer=rt.settings.oidc_issuer,
        origin=origin_of(request, "scim"),
    )


ProvisionerDep = Annotated[scim.Provisioner, Depends(_scim_provisioner)]

router = APIRouter(prefix="/scim/v2", tags=["scim"], route_class=_ScimRoute)


def _scim(body: object, status: int = 200, location: str | None = None) -> Response:
    headers = {"Location": location} if location else None
    return JSONResponse(body, status, headers=headers, media_type=MEDIA_TYPE)


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/") + router.prefix


async def _body(request: Request) -> object:
    try:
        return json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        raise ScimError(400, "the body is not valid JSON", "invalidSyntax") from None


def _user(
    session: SessionDep, ctx: scim.Provisioner, user_id: int, request: Request
) -> dict[str, object]:
    user = users_repo.by_id(session, user_id)
    assert user is not None
    roles = users_repo.roles_of(session, user.id)
    return scim.user_resource(user, roles, ctx.mapping, _base_url(request))


@router.get("/Users")
def list_users(request: Request, ctx: ProvisionerDep, session: SessionDep) -> Response:
    params = request.query_params
    user_name = scim.parse_filter(params.get("filter"), "userName")
    start, count = scim.paging(params.get("startIndex"), params.get("count"))
    page = scim.list_users(session, user_name, start, count)
    held = scim.roles_by_user(session, [user.id for user in page.items])
    base = _base_url(request)
    resources = [
        scim.user_resource(user, frozenset(held.get(user.id, ())), ctx.mapping, base)
        for user in page.items
    ]
    return _scim(scim.list_response(page, resources))


@router.get("/Users/{user_id}")
def get_user(user_id: str, request: Request, ctx: ProvisionerDep, session: SessionDep) -> Response:
    user = scim.user_by_id(session, user_id)
    return _scim(_user(session, ctx, user.id, request))


@router.post("/Users")
async def create_user(request: Request, ctx: ProvisionerDep, session: SessionDep) -> Response:
    fields = scim.user_fields(await _body(request), ctx.departments)
    user = scim.create_user(session, ctx, fields)
    session.commit()
    resource = _user(session, ctx, user.id, request)
    return _scim(resource, 201, location=f"{_base_url(request)}/Users/{user.id}")


@router.put("/Users/{user_id}")
async def replace_user(
    user_id: str, request: Request, ctx: ProvisionerDep, session: SessionDep
) -> Response:
    fields = scim.user_fields(await _body(request), ctx.departments)
    user = scim.user_by_id(session, user_id, for_update=True)
    scim.replace_user(session, ctx, user, fields)
    session.commit()
    return _scim(_user(session, ctx, user.id, request))


@router.patch("/Users/{user_id}")
async def patch_user(
    user_id: str, request: Request, ctx: ProvisionerDep, session: SessionDep
) -> Response:
    active = scim.active_from_patch(await _body(request))
    user = scim.user_by_id(session, user_id, for_update=True)
    scim.set_active(session, ctx, user, active)
    session.commit()
    return _scim(_user(session, ctx, user.id, request))


@router.delete("/Users/{user_id}")
def deactivate_user(user_id: str, ctx: ProvisionerDep, session: SessionDep) -> Response:
    """Deactivates: the account and its audit history stay; sign-in is refused."""
    user = scim.user_by_id(session, user_id, for_update=True)
    scim.set_active(session, ctx, user, False)
    session.commit()
    return Response(status_code=204)


@router.get("/Groups")
def list_groups(request: Request, ctx: ProvisionerDep, session: SessionDep) -> Response:
    params = request.query_params
    names = scim.group_names(ctx.mapping, scim.parse_filter(params.get("filter"), "displayName"))
    start, count = scim.paging(params.get("startIndex"), params.get("count"))
    page = scim.Page(len(names), start, names[start - 1 : start - 1 + count])
    resources = scim.group_resources(session, ctx.mapping, page.items, _base_url(request))
    return _scim(scim.list_response(page, resources))


@router.get("/Groups/{group_id}")
def get_group(
    group_id: str, request: Request, ctx: ProvisionerDep, session: SessionDep
) -> Response:
    name = scim.group_by_id(ctx.mapping, group_id)
    [resource] = scim.group_resources(session, ctx.mapping, [name], _base_url(request))
    return _scim(resource)


@router.patch("/Groups/{group_id}")
async def patch_group(
    group_id: str, request: Request, ctx: ProvisionerDep, session: SessionDep
) -> Response:
    name = scim.group_by_id(ctx.mapping, group_id)
    changes = scim.membership_changes(await _body(request))
    scim.change_members(session, ctx, name, changes)
    session.commit()
    return Response(status_code=204)

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
from core import credential_guard, scim, scim_discovery
from core.identity import identity_map_of
from core.models import ScimGroup, User
from core.scim import MEDIA_TYPE, ScimError


class _ScimRoute(APIRoute):
    """Turns a ScimError (from the route or its dependencies) into SCIM's error body."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except ScimError as refused:
                headers = dict(refused.headers)
                if refused.status == 401:
                    headers["WWW-Authenticate"] = 'Bearer realm="scim"'
                return JSONResponse(
                    refused.body(), refused.status, headers=headers, media_type=MEDIA_TYPE
                )

        return answer


def _scim_provisioner(request: Request, rt: RuntimeDep, session: SessionDep) -> scim.Provisioner:
    """The identity provider, known by SCIM_TOKEN (compared in constant time). A wrong
    token is audited and counted against the caller's address (core/credential_guard.py)."""
    expected = rt.settings.scim_token
    if expected is None or not expected.get_secret_value():
        raise ScimError(404, "SCIM provisioning is not enabled here (SCIM_TOKEN is not set)")
    origin = origin_of(request, "scim")
    presented = request.headers.get("authorization")
    scheme, _, token = (presented or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode(), expected.get_secret_value().encode()
    ):
        if presented is not None:
            reason = "wrong_token" if scheme.lower() == "bearer" else "not_bearer"
            try:
                credential_guard.refuse(
                    session,
                    rt.settings,
                    origin,
                    "scim_token",
                    "scim.token_refused",
                    {"reason": reason},
                )
            except credential_guard.CredentialsThrottled as throttled:
                raise ScimError(
                    429, str(throttled), headers={"Retry-After": str(throttled.retry_after)}
                ) from None
        raise ScimError(401, "a valid SCIM bearer token is required")
    return scim.Provisioner(
        mapping=identity_map_of(rt),
        departments=rt.policy.roles.departments,
        issuer=rt.settings.oidc_issuer,
        origin=origin,
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


def _user(session: SessionDep, user: User, request: Request) -> dict[str, object]:
    [resource] = scim.user_resources(session, [user], _base_url(request))
    return resource


def _group(session: SessionDep, group: ScimGroup, request: Request) -> dict[str, object]:
    [resource] = scim.group_resources(session, [group], _base_url(request))
    return resource


def _without_members(request: Request) -> bool:
    """`excludedAttributes=members`, how providers list big groups (RFC 7644 3.4.2.5)."""
    excluded = request.query_params.get("excludedAttributes", "")
    return "members" in {name.strip().lower() for name in excluded.split(",")}


# --- discovery -------------------------------------------------------------------------


@router.get("/ServiceProviderConfig")
def service_provider_config(request: Request, ctx: ProvisionerDep) -> Response:
    return _scim(scim_discovery.service_provider_config(_base_url(request)))


@router.get("/ResourceTypes")
def resource_types(request: Request, ctx: ProvisionerDep) -> Response:
    return _scim(scim_discovery.resource_types(_base_url(request)))


@router.get("/ResourceTypes/{name}")
def resource_type(name: str, request: Request, ctx: ProvisionerDep) -> Response:
    return _scim(scim_discovery.resource_type(name, _base_url(request)))


@router.get("/Schemas")
def schemas(request: Request, ctx: ProvisionerDep) -> Response:
    return _scim(scim_discovery.schemas(_base_url(request)))


@router.get("/Schemas/{schema_id}")
def schema(schema_id: str, request: Request, ctx: ProvisionerDep) -> Response:
    return _scim(scim_discovery.schema(schema_id, _base_url(request)))


# --- users -----------------------------------------------------------------------------


@router.get("/Users")
def list_users(request: Request, ctx: ProvisionerDep, session: SessionDep) -> Response:
    params = request.query_params
    found_by = scim.parse_filter(params.get("filter"), ("userName", "externalId", "emails.value"))
    start, count = scim.paging(params.get("startIndex"), params.get("count"))
    page = scim.list_users(session, ctx, found_by, start, count)
    return _scim(
        scim.list_response(page, scim.user_resources(session, page.items, _base_url(request)))
    )


@router.get("/Users/{user_id}")
def get_user(user_id: str, request: Request, ctx: ProvisionerDep, session: SessionDep) -> Response:
    return _scim(_user(session, scim.user_by_id(session, user_id), request))


@router.post("/Users")
async def create_user(request: Request, ctx: ProvisionerDep, session: SessionDep) -> Response:
    fields = scim.user_fields(await _body(request), ctx.departments)
    user = scim.create_user(session, ctx, fields)
    session.commit()
    return _scim(
        _user(session, user, request), 201, location=f"{_base_url(request)}/Users/{user.id}"
    )


@router.put("/Users/{user_id}")
async def replace_user(
    user_id: str, request: Request, ctx: ProvisionerDep, session: SessionDep
) -> Response:
    fields = scim.user_fields(await _body(request), ctx.departments)
    user = scim.user_by_id(session, user_id, for_update=True)
    scim.replace_user(session, ctx, user, fields)
    session.commit()
    return _scim(_user(session, user, request))


@router.patch("/Users/{user_id}")
async def patch_user(
    user_id: str, request: Request, ctx: ProvisionerDep, session: SessionDep
) -> Response:
    body = await _body(request)
    user = scim.user_by_id(session, user_id, for_update=True)
    [current] = scim.user_resources(session, [user], _base_url(request))
    fields = scim.user_fields(scim.patched_user(current, body), ctx.departments)
    scim.replace_user(session, ctx, user, fields)
    session.commit()
    return _scim(_user(session, user, request))


@router.delete("/Users/{user_id}")
def deactivate_user(user_id: str, ctx: ProvisionerDep, session: SessionDep) -> Response:
    """Deactivates: the account and its audit history stay; sign-in is refused."""
    user = scim.user_by_id(session, user_id, for_update=True)
    scim.deactivate(session, ctx, user)
    session.commit()
    return Response(status_code=204)


# --- groups ----------------------------------------------------------------------------


@router.get("/Groups")
def list_groups(request: Request, ctx: ProvisionerDep, session: SessionDep) -> Response:
    params = request.query_params
    found_by = scim.parse_filter(params.get("filter"), ("displayName", "externalId"))
    start, count = scim.paging(params.get("startIndex"), params.get("count"))
    page = scim.list_groups(session, found_by, start, count)
    resources = scim.group_resources(
        session, page.items, _base_url(request), with_members=not _without_members(request)
    )
    return _scim(scim.list_response(page, resources))


@router.get("/Groups/{group_id}")
def get_group(
    group_id: str, request: Request, ctx: ProvisionerDep, session: SessionDep
) -> Response:
    group = scim.group_by_id(session, group_id)
    [resource] = scim.group_resources(
        session, [group], _base_url(request), with_members=not _without_members(request)
    )
    return _scim(resource)


@router.post("/Groups")
async def create_group(request: Request, ctx: ProvisionerDep, session: SessionDep) -> Response:
    fields = scim.group_fields(await _body(request))
    group = scim.write_group(session, ctx, None, fields)
    session.commit()
    location = f"{_base_url(request)}/Groups/{group.id}"
    return _scim(_group(session, group, request), 201, location=location)


@router.put("/Groups/{group_id}")
async def replace_group(
    group_id: str, request: Request, ctx: ProvisionerDep, session: SessionDep
) -> Response:
    fields = scim.group_fields(await _body(request))
    group = scim.group_by_id(session, group_id, for_update=True)
    scim.write_group(session, ctx, group, fields)
    session.commit()
    return _scim(_group(session, group, request))


@router.patch("/Groups/{group_id}")
async def patch_group(
    group_id: str, request: Request, ctx: ProvisionerDep, session: SessionDep
) -> Response:
    body = await _body(request)
    group = scim.group_by_id(session, group_id, for_update=True)
    [current] = scim.group_resources(session, [group], _base_url(request))
    scim.write_group(session, ctx, group, scim.group_fields(scim.patched_group(current, body)))
    session.commit()
    return Response(status_code=204)


@router.delete("/Groups/{group_id}")
def delete_group(group_id: str, ctx: ProvisionerDep, session: SessionDep) -> Response:
    """The group is gone; its members' roles are recomputed from the groups they keep."""
    group = scim.group_by_id(session, group_id, for_update=True)
    scim.delete_group(session, ctx, group)
    session.commit()
    return Response(status_code=204)

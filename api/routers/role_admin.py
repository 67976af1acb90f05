"""Role administration: versioned role changes through the system-change chain, with what-if."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Path, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from api.deps import CallerDep, RuntimeDep, origin_of, require
from api.schemas import InputModel, Page, RequestOut, ScopeOut, request_out, scope_out
from core import role_admin
from core.request_service import RequestError
from core.role_admin import AccessChange, ApproverChange, RoleSummary, VersionRow, WhatIf
from policies.engine import RoleDef

router = APIRouter(prefix="/api/v1/admin", tags=["role-admin"])

RoleName = Path(min_length=1, max_length=64, examples=["crm.analyst"])


class RoleChangeIn(InputModel):
    """The proposed definition: what is left out stays as it is."""

    workspaces: list[str] | None = Field(default=None, examples=[["crm", "risk"]])
    permissions: list[str] | None = Field(default=None, examples=[["players:view"]])
    scope: dict[str, Any] | None = Field(
        default=None,
        examples=[{"regions": ["UK", "IE"], "segments": "*", "max_amount": "25000"}],
        description="regions and segments: '*' or a list; max_amount: a number or null",
    )

    def changes(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class RoleProposalIn(RoleChangeIn):
    reason: str = Field(min_length=1, max_length=2000, examples=["analysts now triage fraud"])


class RoleDefOut(BaseModel):
    department: str
    description: str
    workspaces: list[str]
    permissions: list[str]
    scope: ScopeOut
    mfa_required: bool


class RoleAdminOut(BaseModel):
    name: str
    version: int = Field(description="0: as in policies/roles.yaml; then one per approved change")
    definition: RoleDefOut
    pending_request_id: uuid.UUID | None = Field(description="the change waiting for approval")


class AccessChangeOut(BaseModel):
    username: str
    display_name: str
    workspaces_gained: list[str]
    workspaces_lost: list[str]
    permissions_gained: list[str]
    permissions_lost: list[str]
    scope_before: ScopeOut
    scope_after: ScopeOut


class ApproverChangeOut(BaseModel):
    request_id: uuid.UUID
    action: str
    target: str
    step: str
    approvers_before: list[str]
    approvers_after: list[str]


class WhatIfOut(BaseModel):
    role: str
    current: RoleDefOut
    proposed: RoleDefOut
    users: list[AccessChangeOut] = Field(description="people whose access would change")
    requests: list[ApproverChangeOut] = Field(
        description="pending requests whose current step would have other approvers"
    )


class ProposalOut(BaseModel):
    request: RequestOut
    what_if: WhatIfOut


class RoleVersionOut(BaseModel):
    version: int
    definition: RoleDefOut
    proposed_by: str
    request_id: uuid.UUID
    activated_at: datetime


def definition_out(definition: RoleDef) -> RoleDefOut:
    return RoleDefOut(
        department=definition.department,
        description=definition.description,
        workspaces=list(definition.workspaces),
        permissions=list(definition.permissions),
        scope=scope_out(definition.scope.data_scope()),
        mfa_required=definition.mfa_required,
    )


def _role_out(summary: RoleSummary) -> RoleAdminOut:
    return RoleAdminOut(
        name=summary.name,
        version=summary.version,
        definition=definition_out(summary.definition),
        pending_request_id=summary.pending_request_id,
    )


def _access_out(change: AccessChange) -> AccessChangeOut:
    return AccessChangeOut(
        username=change.username,
        display_name=change.display_name,
        workspaces_gained=change.workspaces_gained,
        workspaces_lost=change.workspaces_lost,
        permissions_gained=change.permissions_gained,
        permissions_lost=change.permissions_lost,
        scope_before=scope_out(change.scope_before),
        scope_after=scope_out(change.scope_after),
    )


def _approvers_out(change: ApproverChange) -> ApproverChangeOut:
    return ApproverChangeOut(
        request_id=change.request_id,
        action=change.action,
        target=change.target,
        step=change.step_name,
        approvers_before=change.before,
        approvers_after=change.after,
    )


def what_if_out(result: WhatIf) -> WhatIfOut:
    return WhatIfOut(
        role=result.role,
        current=definition_out(result.current),
        proposed=definition_out(result.proposed),
        users=[_access_out(change) for change in result.users],
        requests=[_approvers_out(change) for change in result.requests],
    )


def _version_out(row: VersionRow) -> RoleVersionOut:
    return RoleVersionOut(
        version=row.version.version,
        definition=definition_out(RoleDef.model_validate(row.version.definition)),
        proposed_by=row.proposed_by,
        request_id=row.version.request_id,
        activated_at=row.version.activated_at,
    )


def _refused(err: RequestError) -> JSONResponse:
    """The refusal, with each field that is wrong and why."""
    return JSONResponse({"detail": err.detail, "fields": err.fields}, status_code=err.status)


@router.get("/roles", response_model=Page[RoleAdminOut])
def list_roles(caller: CallerDep, rt: RuntimeDep):
    """Every role as in force now, with its version and any change awaiting approval.
    Needs roles:view."""
    require(rt, caller.principal, role_admin.VIEW)
    rows = role_admin.roles_with_versions(rt, caller.principal)
    return Page[RoleAdminOut](items=[_role_out(row) for row in rows], next=None)


@router.get("/roles/{role}", response_model=RoleAdminOut)
def get_role(caller: CallerDep, rt: RuntimeDep, role: str = RoleName):
    require(rt, caller.principal, role_admin.VIEW)
    try:
        return _role_out(role_admin.role_summary(rt, caller.principal, role))
    except RequestError as err:
        return _refused(err)


@router.get("/roles/{role}/history", response_model=Page[RoleVersionOut])
def role_history(caller: CallerDep, rt: RuntimeDep, role: str = RoleName):
    """The role's approved versions, newest first (version 0, the file, is not listed)."""
    require(rt, caller.principal, role_admin.VIEW)
    try:
        rows = role_admin.history(rt, caller.principal, role)
    except RequestError as err:
        return _refused(err)
    return Page[RoleVersionOut](items=[_version_out(row) for row in rows], next=None)


@router.post("/roles/{role}/what-if", response_model=WhatIfOut)
def what_if(body: RoleChangeIn, caller: CallerDep, rt: RuntimeDep, role: str = RoleName):
    """Whose access, and which pending requests' approvers, the proposed definition would
    change. Writes nothing. Needs roles:edit."""
    require(rt, caller.principal, role_admin.EDIT)
    try:
        return what_if_out(role_admin.what_if(rt, caller.principal, role, body.changes()))
    except RequestError as err:
        return _refused(err)


@router.post(
    "/roles/{role}/proposals", status_code=status.HTTP_201_CREATED, response_model=ProposalOut
)
async def propose(
    body: RoleProposalIn, request: Request, caller: CallerDep, rt: RuntimeDep, role: str = RoleName
):
    """Ask for the role's new definition through the system-change chain
    (policy.role_change); approved, it is in force at once. Needs roles:edit."""
    require(rt, caller.principal, role_admin.EDIT)
    changes = body.changes()
    changes.pop("reason", None)
    try:
        proposal = await role_admin.propose(
            rt, caller.principal, role, changes, body.reason, origin_of(request, "api")
        )
    except RequestError as err:
        return _refused(err)

    def answer() -> ProposalOut:
        with rt.sessions() as session:
            out = request_out(session, proposal.request)
        return ProposalOut(request=out, what_if=what_if_out(proposal.what_if))

    return await run_in_threadpool(answer)

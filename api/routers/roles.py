"""Roles catalogue API: what each role may see and do, and its data scope."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from api.deps import CallerDep, RuntimeDep, require
from api.schemas import Page, RoleOut, scope_out

router = APIRouter(prefix="/api/v1", tags=["roles"])


@router.get("/roles", response_model=Page[RoleOut])
def list_roles(
    caller: CallerDep,
    rt: RuntimeDep,
    department: Annotated[str | None, Query(max_length=32, examples=["finance"])] = None,
):
    """Every predefined role, by name; `department` narrows it to one department.
    Needs the roles:view permission."""
    require(rt, caller.principal, "roles:view")
    catalogue = rt.policy.roles
    if department is not None and department not in catalogue.departments:
        raise HTTPException(
            422,
            f"unknown department '{department}'; one of: {', '.join(catalogue.departments)}",
        )
    items = [
        RoleOut(
            name=name,
            department=role.department,
            description=role.description,
            workspaces=list(role.workspaces),
            permissions=list(role.permissions),
            scope=scope_out(role.scope.data_scope()),
        )
        for name, role in sorted(catalogue.roles.items())
        if department is None or role.department == department
    ]
    return Page[RoleOut](items=items, next=None)

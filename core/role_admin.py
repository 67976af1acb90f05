"""Role administration: roles as data, changed through the system-change chain.

policies/roles.yaml holds the defaults. A change made in the app is a proposed full
definition of one role, checked by the same RoleDef model and name checks as the file,
carried as the `definition` param of a `policy.role_change` request. Once the chain
approves, `activate` stores it as the role's next version (exactly once per request,
through the platform_changes ledger) and audits before and after; every process's policy
engine then reloads the overrides (core/repositories/role_versions.py).

Before submitting, `what_if` says whose access would change and which pending requests
would get other approvers.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from core import audit, platform_actions
from core.db import SessionFactory, transaction
from core.models import (
    ApprovalRequest,
    JitGrant,
    PlatformChange,
    RoleVersion,
    Task,
    User,
    UserRole,
)
from core.platform import PlatformGateway
from core.platform_actions import APPLY, ActionRefused
from core.repositories import requests as requests_repo
from core.repositories import role_versions as versions_repo
from core.repositories import users as users_repo
from core.request_service import (
    MAX_REASON,
    NewRequest,
    RequestError,
    refusal,
    requester_team,
    start_approval,
    text_problem,
)
from core.runtime import Runtime
from policies.engine import (
    PolicyEngine,
    PolicyError,
    RoleDef,
    ScopeDef,
    approver_problems,
    role_problems,
    within_scope,
)
from policies.rules import permission_matches
from policies.snapshot import EVERY, DataScope, Principal
from workflows.contracts import ExecuteInput, ExecuteResult, Origin

ROLE_CHANGE = "policy.role_change"
VIEW = "roles:view"
EDIT = "roles:edit"
# What a proposal may change; the rest of the definition stays as it is.
EDITABLE = ("workspaces", "permissions", "scope")
MAX_LIST = 200


def role_stream(role: str) -> str:
    return f"role:{role}"


# --- checking a proposal -------------------------------------------------------------


def require(rt: Runtime, principal: Principal, permission: str) -> None:
    verdict = rt.policy.authorize(principal, permission)
    if not verdict:
        raise refusal(verdict)


def current_definition(rt: Runtime, role: str) -> RoleDef:
    definition = rt.policy.roles.roles.get(role)
    if definition is None:
        raise RequestError(404, f"no role '{role}'", {"role": "unknown role"})
    return definition


def _loc(loc: Iterable[int | str]) -> str:
    return ".".join(str(part) for part in loc) or "definition"


def proposed_definition(rt: Runtime, role: str, changes: Mapping[str, Any]) -> RoleDef:
    """The role's definition with these changes (workspaces, permissions, scope), checked
    as the file is at start-up; RequestError(422) names every field that is wrong."""
    current = current_definition(rt, role)
    unknown = sorted(set(changes) - set(EDITABLE))
    if unknown:
        fields = {name: "cannot be changed here" for name in unknown}
        raise RequestError(422, f"only {', '.join(EDITABLE)} can be changed", fields)
    for name in ("workspaces", "permissions"):
        value = changes.get(name)
        if isinstance(value, list) and len(value) > MAX_LIST:
            raise RequestError(422, f"{name}: at most {MAX_LIST}", {name: f"at most {MAX_LIST}"})
    try:
        proposed = RoleDef.model_validate({**current.model_dump(mode="json"), **changes})
    except ValidationError as exc:
        fields = {_loc(e["loc"]): str(e["msg"]) for e in exc.errors()}
        raise RequestError(422, "; ".join(f"{k}: {v}" for k, v in fields.items()), fields) from None
    roles = rt.policy.roles.model_copy(update={"roles": {**rt.policy.roles.roles, role: proposed}})
    fields = dict(role_problems(roles, role, set(rt.policy.chains.chains)))
    if not fields:
        for _, problem in approver_problems(roles, rt.policy.chains):
            fields["permissions"] = f"{problem}: that approval step would have no approver"
            break
    if fields:
        raise RequestError(422, "; ".join(f"{k}: {v}" for k, v in fields.items()), fields)
    if proposed == current:
        raise RequestError(422, "the proposal changes nothing", {"definition": "unchanged"})
    return proposed


def _definition_json(definition: RoleDef) -> dict[str, Any]:
    return definition.model_dump(mode="json", exclude_none=True)


# --- what-if -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Person:
    user_id: int
    username: str
    display_name: str
    team: str | None
    roles: frozenset[str]

    def principal(self) -> Principal:
        return Principal(self.user_id, self.username, self.roles)


@dataclass(frozen=True)
class AccessChange:
    username: str
    display_name: str
    workspaces_gained: list[str]
    workspaces_lost: list[str]
    permissions_gained: list[str]
    permissions_lost: list[str]
    scope_before: DataScope
    scope_after: DataScope

    @property
    def scope_changed(self) -> bool:
        return self.scope_before != self.scope_after


@dataclass(frozen=True)
class InFlight:
    """A pending request's current step, as the what-if needs it."""

    request_id: uuid.UUID
    action: str
    target: str
    step_name: str
    step_roles: frozenset[str]
    requester_id: int
    requester_team: str | None
    outside_requester_team: bool
    region: str | None
    segment: str | None
    amount: Decimal | None
    decided_by: frozenset[int]


@dataclass(frozen=True)
class ApproverChange:
    request_id: uuid.UUID
    action: str
    target: str
    step_name: str
    before: list[str]
    after: list[str]

    @property
    def gained(self) -> list[str]:
        return [name for name in self.after if name not in self.before]

    @property
    def lost(self) -> list[str]:
        return [name for name in self.before if name not in self.after]


@dataclass(frozen=True)
class WhatIf:
    role: str
    current: RoleDef
    proposed: RoleDef
    users: list[AccessChange] = field(default_factory=list)
    requests: list[ApproverChange] = field(default_factory=list)


def _not_covered(wanted: Iterable[str], granted: Iterable[str]) -> list[str]:
    held = list(granted)
    return sorted(p for p in set(wanted) if not any(permission_matches(g, p) for g in held))


def access_changes(
    before: PolicyEngine, after: PolicyEngine, people: Iterable[Person]
) -> list[AccessChange]:
    """Per person, what they would gain or lose (workspaces, permissions, data scope);
    people whose access stays the same are left out."""
    changes = []
    for person in people:
        principal = person.principal()
        spaces_before = {key for key, _ in before.workspaces_for(principal)}
        spaces_after = {key for key, _ in after.workspaces_for(principal)}
        granted_before = before.permissions_of(principal)
        granted_after = after.permissions_of(principal)
        change = AccessChange(
            username=person.username,
            display_name=person.display_name,
            workspaces_gained=sorted(spaces_after - spaces_before),
            workspaces_lost=sorted(spaces_before - spaces_after),
            # A permission another of their roles still covers (or already did) is no change.
            permissions_gained=_not_covered(granted_after - granted_before, granted_before),
            permissions_lost=_not_covered(granted_before - granted_after, granted_after),
            scope_before=before.scope_of(principal),
            scope_after=after.scope_of(principal),
        )
        if (
            change.workspaces_gained
            or change.workspaces_lost
            or change.permissions_gained
            or change.permissions_lost
            or change.scope_changed
        ):
            changes.append(change)
    return sorted(changes, key=lambda c: c.username)


def could_decide(policy: PolicyEngine, request: InFlight, person: Person) -> bool:
    """May this person decide the request's current step under this policy (their own
    roles; delegations are not counted)?"""
    if person.user_id == request.requester_id or person.user_id in request.decided_by:
        return False
    if not person.roles & request.step_roles:
        return False
    if (
        request.outside_requester_team
        and person.team is not None
        and person.team == request.requester_team
    ):
        return False
    principal = person.principal()
    if not policy.authorize(principal, f"{request.action}:approve"):
        return False
    scope = policy.scope_of(principal)
    return bool(
        within_scope(scope, region=request.region, segment=request.segment, amount=request.amount)
    )


def approver_changes(
    before: PolicyEngine,
    after: PolicyEngine,
    requests: Iterable[InFlight],
    people: Iterable[Person],
) -> list[ApproverChange]:
    """Pending requests whose current step would be decidable by other people."""
    candidates = list(people)
    changes = []
    for request in requests:
        could_before = sorted(p.username for p in candidates if could_decide(before, request, p))
        could_after = sorted(p.username for p in candidates if could_decide(after, request, p))
        if could_before != could_after:
            changes.append(
                ApproverChange(
                    request.request_id,
                    request.action,
                    request.target,
                    request.step_name,
                    could_before,
                    could_after,
                )
            )
    return changes


def _people_with(session: Session, roles: Iterable[str]) -> list[Person]:
    """Active people holding any of these roles (directly or by a just-in-time grant in
    force), each with all their roles."""
    wanted = list(roles)
    direct = select(UserRole.user_id).where(UserRole.role.in_(wanted))
    elevated = select(JitGrant.user_id).where(
        JitGrant.role.in_(wanted),
        JitGrant.status == "active",
        JitGrant.revoked_at.is_(None),
        JitGrant.expires_at > func.now(),
    )
    users = session.execute(
        select(User)
        .where(User.is_active.is_(True), or_(User.id.in_(direct), User.id.in_(elevated)))
        .order_by(User.username)
    ).scalars()
    people = []
    for user in users:
        held = users_repo.roles_of(session, user.id) | users_repo.active_jit_roles(session, user.id)
        people.append(Person(user.id, user.username, user.display_name, user.team, held))
    return people


def _in_flight(session: Session, role: str) -> list[InFlight]:
    """Pending requests whose current step the role may decide."""
    rows = session.execute(
        select(ApprovalRequest, Task, User.team)
        .join(
            Task,
            (Task.request_id == ApprovalRequest.id)
            & (Task.step_index == ApprovalRequest.current_step),
        )
        .join(User, User.id == ApprovalRequest.requester_id)
        .where(ApprovalRequest.status == "pending", Task.roles.contains([role]))
        .order_by(ApprovalRequest.created_at)
    ).all()
    found = []
    for request, task, team in rows:
        spec = request.chain["steps"][request.current_step]
        decided = requests_repo.decisions(session, request.id)
        found.append(
            InFlight(
                request_id=request.id,
                action=request.action,
                target=request.target,
                step_name=task.name,
                step_roles=frozenset(task.roles),
                requester_id=request.requester_id,
                requester_team=team,
                outside_requester_team=bool(spec.get("outside_requester_team")),
                region=request.region,
                segment=request.segment,
                amount=request.amount,
                decided_by=frozenset(d.user_id for d, _ in decided),
            )
        )
    return found


def what_if(rt: Runtime, principal: Principal, role: str, changes: Mapping[str, Any]) -> WhatIf:
    """Whose access and which pending requests' approvers the proposal would change."""
    require(rt, principal, EDIT)
    current = current_definition(rt, role)
    proposed = proposed_definition(rt, role, changes)
    return _what_if(rt, role, current, proposed)


def _what_if(rt: Runtime, role: str, current: RoleDef, proposed: RoleDef) -> WhatIf:
    before = rt.policy
    after = before.with_overrides({role: proposed})
    with rt.sessions() as session:
        holders = _people_with(session, [role])
        requests = _in_flight(session, role)
        step_roles = {name for request in requests for name in request.step_roles}
        candidates = _people_with(session, step_roles) if step_roles else []
    return WhatIf(
        role=role,
        current=current,
        proposed=proposed,
        users=access_changes(before, after, holders),
        requests=approver_changes(before, after, requests, candidates),
    )


def _still_administrable(rt: Runtime, role: str, proposed: RoleDef) -> None:
    """Someone must still be able to propose role changes after this one (approving them
    is kept by the check that every chain step's roles grant approval)."""
    after = rt.policy.with_overrides({role: proposed})
    editing = [
        name
        for name, definition in after.roles.roles.items()
        if any(permission_matches(p, EDIT) for p in definition.permissions)
    ]
    with rt.sessions() as session:
        holders = _people_with(session, editing) if editing else []
    if not any(
        after.authorize(p.principal(), EDIT) and after.may_request(p.principal(), ROLE_CHANGE)
        for p in holders
    ):
        raise RequestError(
            422,
            f"after this change nobody could propose role changes ({EDIT})",
            {"permissions": f"would leave nobody with {EDIT}"},
        )


# --- proposing -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Proposal:
    request: ApprovalRequest
    what_if: WhatIf


async def propose(
    rt: Runtime,
    principal: Principal,
    role: str,
    changes: Mapping[str, Any],
    reason: str,
    origin: Origin,
) -> Proposal:
    """Start the system-change chain for a new definition of `role`."""

    def prepare() -> tuple[NewRequest, str | None, WhatIf]:
        require(rt, principal, EDIT)
        verdict = rt.policy.may_request(principal, ROLE_CHANGE)
        if not verdict:
            raise refusal(verdict)
        cleaned = reason.strip()
        problem = "a reason is required" if not cleaned else text_problem(cleaned, MAX_REASON)
        current = current_definition(rt, role)
        proposed = proposed_definition(rt, role, changes)
        if problem is not None:
            raise RequestError(422, f"reason: {problem}", {"reason": problem})
        _still_administrable(rt, role, proposed)
        params, errors = rt.policy.validate_params(
            ROLE_CHANGE, {"definition": _definition_json(proposed)}, datetime.now(UTC)
        )
        if errors:
            fields = {e.field: e.message for e in errors}
            raise RequestError(422, "; ".join(f"{e.field} {e.message}" for e in errors), fields)
        with rt.sessions() as session:
            existing = requests_repo.pending_for_target(session, ROLE_CHANGE, role)
            if existing is not None:
                raise RequestError(
                    409,
                    f"change request {existing.id} for {role} is already {existing.status}",
                )
            team = requester_team(session, principal)
        checked = NewRequest(ROLE_CHANGE, role, params, cleaned)
        return checked, team, _what_if(rt, role, current, proposed)

    checked, team, impact = await asyncio.to_thread(prepare)
    request = await start_approval(rt, principal, checked, origin, requester_team=team)
    return Proposal(request, impact)


# --- reading ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoleSummary:
    name: str
    definition: RoleDef
    version: int  # 0: as in policies/roles.yaml
    pending_request_id: uuid.UUID | None


@dataclass(frozen=True)
class VersionRow:
    version: RoleVersion
    proposed_by: str


def roles_with_versions(rt: Runtime, principal: Principal) -> list[RoleSummary]:
    require(rt, principal, VIEW)
    with rt.sessions() as session:
        latest = versions_repo.latest_per_role(session)
        pending = dict(
            session.execute(
                select(ApprovalRequest.target, ApprovalRequest.id).where(
                    ApprovalRequest.action == ROLE_CHANGE,
                    ApprovalRequest.status.in_(("pending", "approved")),
                )
            ).all()
        )
    return [
        RoleSummary(
            name,
            definition,
            latest[name].version if name in latest else 0,
            pending.get(name),
        )
        for name, definition in sorted(rt.policy.roles.roles.items())
    ]


def role_summary(rt: Runtime, principal: Principal, role: str) -> RoleSummary:
    require(rt, principal, VIEW)
    definition = current_definition(rt, role)
    with rt.sessions() as session:
        latest = versions_repo.latest(session, role)
        pending = requests_repo.pending_for_target(session, ROLE_CHANGE, role)
    return RoleSummary(
        role,
        definition,
        latest.version if latest is not None else 0,
        pending.id if pending is not None else None,
    )


def history(rt: Runtime, principal: Principal, role: str) -> list[VersionRow]:
    """The role's approved versions, newest first."""
    require(rt, principal, VIEW)
    current_definition(rt, role)
    with rt.sessions() as session:
        rows = versions_repo.history(session, role)
        names = dict(
            session.execute(
                select(User.id, User.username).where(User.id.in_({r.proposed_by for r in rows}))
            ).all()
        )
    return [VersionRow(row, names.get(row.proposed_by, str(row.proposed_by))) for row in rows]


# --- activating an approved change -------------------------------------------------------


def _summary(role: str, version: int, before: RoleDef, after: RoleDef) -> str:
    parts = []
    for name in ("workspaces", "permissions"):
        old, new = getattr(before, name), getattr(after, name)
        added = [f"+{v}" for v in new if v not in old]
        removed = [f"-{v}" for v in old if v not in new]
        if added or removed:
            parts.append(f"{name} {' '.join(added + removed)}")
    if before.scope != after.scope:
        parts.append(f"scope {scope_text(before.scope)} → {scope_text(after.scope)}")
    rest = "; ".join(parts) or "no visible change"
    return f"Role {role} is now version {version}: {rest}"


def scope_text(scope: ScopeDef | DataScope) -> str:
    """'UK,IE / all segments / up to 25000' for a role's or a person's scope."""
    regions = "all regions" if scope.regions == EVERY else ",".join(sorted(scope.regions))
    segments = "all segments" if scope.segments == EVERY else ",".join(sorted(scope.segments))
    limit = f"up to {scope.max_amount}" if scope.max_amount is not None else "no limit"
    return f"{regions} / {segments} / {limit}"


def activate(
    session: Session, policy: PolicyEngine, command: ExecuteInput, now: datetime
) -> ExecuteResult:
    """Make the approved definition the role's next version, exactly once per request."""
    request_id = uuid.UUID(command.request_id)
    done = session.get(PlatformChange, (request_id, APPLY))
    if done is not None:
        return ExecuteResult(before=done.before, after=done.after, summary=done.summary)
    role = command.target
    if role not in policy.defaults.roles:
        raise ActionRefused(f"no role '{role}' in policies/roles.yaml")
    try:
        proposed = RoleDef.model_validate(json.loads(command.params["definition"]))
    except (ValueError, KeyError) as exc:
        raise ActionRefused(f"the proposed definition is not a role definition: {exc}") from None
    # One activation per role at a time, whatever else runs.
    session.execute(select(func.pg_advisory_xact_lock(func.hashtext(role_stream(role)))))
    in_force = {
        name: RoleDef.model_validate(row.definition)
        for name, row in versions_repo.latest_per_role(session).items()
        if name in policy.defaults.roles
    }
    before_def = in_force.get(role, policy.defaults.roles[role])
    try:
        policy.overridden({**in_force, role: proposed})
    except PolicyError as exc:
        raise ActionRefused(f"the definition no longer fits the policy files: {exc}") from None
    request = session.get(ApprovalRequest, request_id)
    if request is None:
        raise ActionRefused(f"no request {request_id}")
    latest = versions_repo.latest(session, role)
    version = (latest.version if latest is not None else 0) + 1
    after = _definition_json(proposed)
    before = _definition_json(before_def)
    session.add(
        RoleVersion(
            role=role,
            version=version,
            definition=after,
            proposed_by=request.requester_id,
            request_id=request_id,
            activated_at=now,
        )
    )
    session.flush()
    summary = _summary(role, version, before_def, proposed)
    audit.append(
        session,
        audit.NewAuditEvent(
            event_id=uuid.uuid5(request_id, "role.changed"),
            stream=role_stream(role),
            action="role.changed",
            target=f"role:{role}",
            actor="system",
            actor_type="system",
            channel="workflow",
            occurred_at=now,
            before={"version": version - 1, "definition": before},
            after={"version": version, "definition": after, "request_id": str(request_id)},
            sensitivity="high",
        ),
    )
    result = ExecuteResult(
        before={"id": role, "version": version - 1, **before},
        after={"id": role, "version": version, **after},
        summary=summary,
    )
    return platform_actions.record_change(session, command, APPLY, result)


class RoleChangingPlatform:
    """The platform gateway, with role changes activated here instead of on the platform."""

    def __init__(self, platform: PlatformGateway, sessions: SessionFactory) -> None:
        self._platform = platform
        self._sessions = sessions
        self._policy: PolicyEngine | None = None

    def _defaults(self) -> PolicyEngine:
        if self._policy is None:
            self._policy = PolicyEngine.load()
        return self._policy

    def execute(self, command: ExecuteInput) -> ExecuteResult:
        if command.action != ROLE_CHANGE:
            return self._platform.execute(command)
        with transaction(self._sessions) as session:
            return activate(session, self._defaults(), command, datetime.now(UTC))

    def revert(self, command: ExecuteInput) -> ExecuteResult:
        if command.action == ROLE_CHANGE:
            raise ActionRefused("a role change is undone by another role change")
        return self._platform.revert(command)

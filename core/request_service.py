"""Submitting, deciding and cancelling approval requests: the one path for web, API and chat.

Every entry point calls these functions, which ask the policy engine first, then start or
update the request's workflow; the workflow's validators re-check what must always hold.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.orm import Session
from temporalio.client import (
    RPCTimeoutOrCancelledError,
    WithStartWorkflowOperation,
    WorkflowUpdateFailedError,
)
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from core import auth, platform_actions
from core.auth import security_event as record_security_event
from core.db import transaction
from core.models import ApprovalRequest, Player, User
from core.repositories import delegations as delegations_repo
from core.repositories import payments as payments_repo
from core.repositories import requests as requests_repo
from core.repositories import users as users_repo
from core.repositories.delegations import ActiveDelegation
from core.runtime import Runtime
from policies.engine import within_scope
from policies.rules import ALLOW, Decision, check_approval_decision, check_cancel, deny
from policies.snapshot import DataScope, Principal
from workflows.approval import ApprovalWorkflow
from workflows.contracts import (
    ApprovalInput,
    CancelInput,
    DecisionInput,
    Origin,
    ScopeInput,
    approval_workflow_id,
)

MAX_REASON = 2000
VIEW_ALL = "requests:view_all"
WORKFLOW_ANSWER_TIMEOUT = 15.0
MAX_COMMENT = 2000

# Refusal codes of the policy rules and workflow validators, as HTTP statuses.
_STATUS_BY_CODE = {
    "forbidden": 403,
    "own_request": 403,
    "missing_role": 403,
    "not_requester": 403,
    "already_decided": 409,
    "not_pending": 409,
    "bad_decision": 422,
    "unknown_action": 422,
    "same_team": 403,
    "delegation_expired": 403,
    "duplicate_request": 409,
    "own_entry_point": 422,
    "missing_scope": 403,
    "RecordRefused": 422,
    "region_out_of_scope": 403,
    "segment_out_of_scope": 403,
    "over_limit": 403,
}
SCOPE_CODES = frozenset({"region_out_of_scope", "segment_out_of_scope", "over_limit"})


@dataclass
class RequestError(Exception):
    """A refusal to show the person: an HTTP status, a sentence, and per-field messages."""

    status: int
    detail: str
    fields: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.detail


def refusal(decision: Decision) -> RequestError:
    return RequestError(_STATUS_BY_CODE.get(decision.code, 403), decision.reason)


@dataclass
class OutOfScope(RequestError):
    """Acting on data outside one's data scope: refused, and recorded as a security event."""

    code: str = ""


def _out_of_scope(verdict: Decision) -> OutOfScope:
    return OutOfScope(403, verdict.reason, code=verdict.code)


def _record_out_of_scope(
    rt: Runtime, principal: Principal, origin: Origin, refused: OutOfScope, what: dict[str, str]
) -> None:
    """The attempt lands in the audit store in its own transaction (nothing else is written)."""
    with transaction(rt.sessions) as session:
        record_security_event(
            session,
            "access.out_of_scope",
            principal.username,
            origin,
            {**what, "code": refused.code, "reason": refused.detail},
        )


def data_scope(rt: Runtime, principal: Principal) -> DataScope:
    """The data this person reaches: as their principal was built (an API key may narrow
    it), else from their roles."""
    return principal.scope or rt.policy.scope_of(principal)


def target_player(session: Session, action: str, target: str) -> Player | None:
    """The player a request's target belongs to: the player for a player action, the
    payment's player for a withdrawal; None when the target is no player's."""
    if action == "payment.withdrawal":
        payment = payments_repo.get(session, target)
        return session.get(Player, payment.player_id) if payment is not None else None
    field_action = platform_actions.FIELD_ACTIONS.get(action)
    if field_action is not None and field_action.model is Player:
        return session.get(Player, target)
    return None


@dataclass(frozen=True)
class NewRequest:
    action: str
    target: str
    params: dict[str, Any]
    reason: str


def _check_withdrawal_target(session: Session, target: str, params: dict[str, Any]) -> None:
    payment = payments_repo.get(session, target)
    if payment is None or payment.kind != "withdrawal":
        raise RequestError(422, f"no withdrawal with id '{target}'", {"target": "unknown payment"})
    if payment.status != "pending":
        raise RequestError(409, f"withdrawal {target} is {payment.status}, not pending")
    if params.get("amount") in (None, ""):
        params["amount"] = f"{payment.amount:.2f}"
        return
    try:
        matches = Decimal(str(params["amount"])) == payment.amount
    except ArithmeticError:
        return  # not a number: the parameter check names it
    if not matches:
        raise RequestError(
            422,
            f"amount does not match withdrawal {target} ({payment.amount} {payment.currency})",
            {"amount": f"must equal the withdrawal amount {payment.amount}"},
        )


TARGET_CHECKS = {"payment.withdrawal": _check_withdrawal_target}


def _check_field_target(
    session: Session, action: str, target: str, params: dict[str, str]
) -> dict[str, str]:
    """Refuse what makes no sense for the target as it is now; return the derived values."""
    try:
        return platform_actions.check(session, action, target, params)
    except platform_actions.UnknownTarget as unknown:
        raise RequestError(422, str(unknown), {"target": "not found"}) from None
    except platform_actions.ActionRefused as refused:
        raise RequestError(409, str(refused), {"target": str(refused)}) from None


CONTROL_CHARACTERS = {chr(c) for c in range(32)} - {"\n", "\r", "\t"} | {"\x7f"}


def text_problem(value: str, limit: int) -> str | None:
    """Why free text cannot be stored (PostgreSQL refuses NUL; control characters hide text)."""
    if len(value) > limit:
        return f"at most {limit} characters"
    if any(ch in CONTROL_CHARACTERS for ch in value):
        return "contains control characters"
    return None


def _check_text(field_name: str, value: str, limit: int) -> None:
    problem = text_problem(value, limit)
    if problem is not None:
        raise RequestError(422, f"{field_name}: {problem}", {field_name: problem})


@dataclass(frozen=True)
class Prepared:
    """A request ready to start: its checked params and the player its target belongs to."""

    params: dict[str, str]
    region: str | None = None
    segment: str | None = None


def _prepare(session: Session, rt: Runtime, principal: Principal, new: NewRequest) -> Prepared:
    verdict = rt.policy.may_request_generically(principal, new.action)
    if not verdict:
        if verdict.code == "unknown_action":
            raise RequestError(422, verdict.reason, {"action": "unknown action"})
        raise refusal(verdict)
    errors: dict[str, str] = {}
    reason = new.reason.strip()
    if not reason:
        errors["reason"] = "a reason is required"
    elif (problem := text_problem(reason, MAX_REASON)) is not None:
        errors["reason"] = problem
    if not new.target.strip():
        errors["target"] = "a target is required"
    elif (problem := text_problem(new.target, 64)) is not None:
        errors["target"] = problem
    if errors:
        raise RequestError(422, "; ".join(f"{k}: {v}" for k, v in errors.items()), errors)
    scope = data_scope(rt, principal)
    player = target_player(session, new.action, new.target)
    if player is not None:
        # Before any check that would tell something about the target's state.
        verdict = within_scope(scope, region=player.region, segment=player.segment)
        if not verdict:
            raise _out_of_scope(verdict)
    params = dict(new.params)
    check_target = TARGET_CHECKS.get(new.action)
    if check_target is not None:
        check_target(session, new.target, params)
    clean, param_errors = rt.policy.validate_params(new.action, params, datetime.now(UTC))
    if param_errors:
        fields = {e.field: e.message for e in param_errors}
        raise RequestError(422, "; ".join(f"{e.field} {e.message}" for e in param_errors), fields)
    if not (verdict := within_scope(scope, amount=clean.get("amount") or None)):
        raise _out_of_scope(verdict)
    if new.action in platform_actions.FIELD_ACTIONS:
        clean.update(_check_field_target(session, new.action, new.target, clean))
    existing = requests_repo.pending_for_target(session, new.action, new.target)
    if existing is not None:
        raise RequestError(
            409, f"request {existing.id} for {new.target} is already {existing.status}"
        )
    return Prepared(
        clean,
        player.region if player is not None else None,
        player.segment if player is not None else None,
    )


async def submit(
    rt: Runtime, principal: Principal, new: NewRequest, origin: Origin
) -> ApprovalRequest:
    def prepare() -> tuple[Prepared, str | None]:
        with rt.sessions() as session:
            return _prepare(session, rt, principal, new), requester_team(session, principal)

    try:
        prepared, team = await asyncio.to_thread(prepare)
    except OutOfScope as refused:
        what = {"attempt": "request", "action": new.action, "target": new.target[:64]}
        await asyncio.to_thread(_record_out_of_scope, rt, principal, origin, refused, what)
        raise
    checked = NewRequest(new.action, new.target, prepared.params, new.reason)
    return await start_approval(
        rt,
        principal,
        checked,
        origin,
        requester_team=team,
        region=prepared.region,
        segment=prepared.segment,
    )


def requester_team(session: Session, principal: Principal) -> str | None:
    """The requester's team, which the chain's separation of duties keeps from deciding."""
    requester = session.get(User, principal.user_id)
    return requester.team if requester is not None else None


async def start_approval(
    rt: Runtime,
    principal: Principal,
    checked: NewRequest,
    origin: Origin,
    *,
    requester_team: str | None,
    region: str | None = None,
    segment: str | None = None,
) -> ApprovalRequest:
    """Start the approval workflow of a request whose params are already validated, with a
    snapshot of its chain; the request's row once the workflow has recorded it."""
    request_id = str(uuid.uuid4())
    request = ApprovalInput(
        request_id=request_id,
        action=checked.action,
        target=checked.target.strip(),
        params=checked.params,
        reason=checked.reason.strip(),
        requester=principal.username,
        requester_id=principal.user_id,
        chain=rt.policy.chain_for(checked.action, checked.params),
        origin=origin,
        requester_team=requester_team,
        region=region,
        segment=segment,
        decisions_carry_scopes=True,
    )
    start = WithStartWorkflowOperation(
        ApprovalWorkflow.run,
        request,
        id=approval_workflow_id(request_id),
        id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
        task_queue=rt.task_queue,
    )
    try:
        await asyncio.wait_for(
            rt.temporal.execute_update_with_start_workflow(
                ApprovalWorkflow.submitted, start_workflow_operation=start
            ),
            WORKFLOW_ANSWER_TIMEOUT,
        )
    except WorkflowUpdateFailedError as err:
        raise _update_refusal(err) from None
    except (TimeoutError, RPCError, RPCTimeoutOrCancelledError):
        raise RequestError(
            503, "the approval service did not answer; check My requests before retrying"
        ) from None
    return await asyncio.to_thread(load, rt, uuid.UUID(request_id))


def load(rt: Runtime, request_id: uuid.UUID) -> ApprovalRequest:
    with rt.sessions() as session:
        request = requests_repo.get(session, request_id)
    if request is None:
        raise RequestError(404, "request not found")
    return request


def visible_request(
    session: Session, rt: Runtime, principal: Principal, request_id: uuid.UUID
) -> ApprovalRequest:
    """The request if this person may see it; 404 otherwise (never reveal it exists)."""
    request = requests_repo.get(session, request_id)
    if request is None:
        raise RequestError(404, "request not found")
    in_scope = within_scope(
        data_scope(rt, principal), region=request.region, segment=request.segment
    )
    if not in_scope:  # a player outside the person's regions or segments
        raise RequestError(404, "request not found")
    if rt.policy.authorize(principal, VIEW_ALL):
        return request
    roles = decider_roles(session, principal)
    if not requests_repo.can_view(session, request, principal.user_id, roles):
        raise RequestError(404, "request not found")
    return request


def decider_roles(session: Session, principal: Principal) -> frozenset[str]:
    """Roles whose steps this person may see and decide now: their own, and those of anyone
    they stand in for under an active delegation."""
    delegated = delegations_repo.active_for_delegate(session, principal.user_id, datetime.now(UTC))
    return principal.roles.union(*(d.delegator_roles for d in delegated))


@dataclass(frozen=True)
class Approver:
    """Who decides a step, with which roles: their own, or an absent approver's by delegation."""

    roles: frozenset[str]
    team: str | None
    delegation: ActiveDelegation | None = None
    # Each must cover the request: the decider's own and, under a delegation, the delegator's.
    scopes: tuple[DataScope, ...] = ()


def _approver_for(
    session: Session, rt: Runtime, principal: Principal, action: str, step_roles: list[str]
) -> Approver | Decision:
    me = session.get(User, principal.user_id)
    team = me.team if me is not None else None
    own = rt.policy.authorize(principal, f"{action}:approve")
    own_scope = data_scope(rt, principal)
    if own and principal.roles & set(step_roles):
        return Approver(principal.roles, team, scopes=(own_scope,))
    now = datetime.now(UTC)
    for delegation in delegations_repo.active_for_delegate(session, principal.user_id, now):
        delegator = Principal(
            delegation.delegator_id, delegation.delegator_username, delegation.delegator_roles
        )
        if delegation.delegator_roles & set(step_roles) and rt.policy.authorize(
            delegator, f"{action}:approve"
        ):
            return Approver(
                delegation.delegator_roles,
                team,
                delegation,
                (own_scope, rt.policy.scope_of(delegator)),
            )
    if not own:
        return own
    # The step's role check names what is missing.
    return Approver(principal.roles, team, scopes=(own_scope,))


def decision_eligibility(
    session: Session, rt: Runtime, principal: Principal, request: ApprovalRequest
) -> tuple[Decision, Approver | None]:
    """May this person decide the request's current step now, and as whom?"""
    steps = requests_repo.steps(session, request.id)
    if not steps:
        return deny("not_pending", "the request has no open step"), None
    step = steps[request.current_step]
    approver = _approver_for(session, rt, principal, request.action, list(step.roles))
    if isinstance(approver, Decision):
        return approver, None
    decided = requests_repo.decisions(session, request.id)
    stood_in_for = users_repo.usernames(
        session, [d.on_behalf_of_id for d, _ in decided if d.on_behalf_of_id]
    )
    deciders = [username for _, username in decided] + list(stood_in_for.values())
    requester = session.get(User, request.requester_id)
    assert requester is not None
    spec = request.chain["steps"][request.current_step]
    verdict = check_approval_decision(
        user=principal.username,
        user_roles=approver.roles,
        requester=requester.username,
        status=request.status,
        step_name=step.name,
        step_roles=step.roles,
        deciders=deciders,
        on_behalf_of=approver.delegation.delegator_username if approver.delegation else None,
        same_team_as_requester=bool(spec.get("outside_requester_team"))
        and approver.team is not None
        and approver.team == requester.team,
    )
    if verdict:
        verdict = _scope_verdict(approver, request)
    return verdict, approver


def _scope_verdict(approver: Approver, request: ApprovalRequest) -> Decision:
    """Every scope the approver decides with must reach the request's player and amount."""
    for index, scope in enumerate(approver.scopes):
        verdict = within_scope(
            scope, region=request.region, segment=request.segment, amount=request.amount
        )
        if verdict:
            continue
        if index > 0 and approver.delegation is not None:  # the delegator's scope
            name = approver.delegation.delegator_username
            return deny(verdict.code, f"for {name}, whom you stand in for: {verdict.reason}")
        return verdict
    return ALLOW


def _precheck_decision(
    rt: Runtime, principal: Principal, request_id: uuid.UUID, decision: str, comment: str
) -> Approver:
    if decision not in ("approve", "reject"):
        raise RequestError(422, "decision must be 'approve' or 'reject'", {"decision": "invalid"})
    _check_text("comment", comment, MAX_COMMENT)
    with rt.sessions() as session:
        request = visible_request(session, rt, principal, request_id)
        verdict, approver = decision_eligibility(session, rt, principal, request)
    if verdict.code in SCOPE_CODES:
        raise _out_of_scope(verdict)
    if not verdict or approver is None:
        raise refusal(verdict)
    return approver


def _update_refusal(err: WorkflowUpdateFailedError) -> RequestError:
    cause = err.cause
    if isinstance(cause, ApplicationError):
        if cause.type in SCOPE_CODES:
            return OutOfScope(403, cause.message, code=cause.type or "")
        return RequestError(_STATUS_BY_CODE.get(cause.type or "", 409), cause.message)
    return RequestError(409, "the request no longer accepts decisions")


async def _send_update(update: Awaitable[object]) -> None:
    """Send a decision-like Update; map refusals and a closed workflow to 4xx."""
    try:
        await asyncio.wait_for(update, WORKFLOW_ANSWER_TIMEOUT)
    except WorkflowUpdateFailedError as err:
        raise _update_refusal(err) from None
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise RequestError(409, "the request is closed and accepts no more changes") from None
        raise RequestError(503, "the approval service is unavailable; retry shortly") from None
    except (TimeoutError, RPCTimeoutOrCancelledError):
        raise RequestError(
            503, "the approval service did not answer in time; reload to see the request"
        ) from None


def _step_up(
    rt: Runtime, principal: Principal, request_id: uuid.UUID, totp: str | None, origin: Origin
) -> None:
    """A high-risk approval needs a recent authenticator check (core.auth says which are)."""
    with rt.sessions() as session:
        request = requests_repo.get(session, request_id)
        if request is None:
            return
        action, amount = request.action, request.amount
        try:
            auth.step_up(session, rt.settings, principal, action, amount, totp, origin)
        except auth.AuthError as err:
            session.commit()  # keep the audited failure (and any lockout)
            raise RequestError(403, str(err), {"totp": "a fresh authenticator code"}) from None
        session.commit()


async def decide(
    rt: Runtime,
    principal: Principal,
    request_id: uuid.UUID,
    decision: str,
    comment: str,
    origin: Origin,
    totp: str | None = None,
) -> ApprovalRequest:
    what = {"attempt": "decision", "request": str(request_id), "decision": decision[:16]}
    try:
        approver = await asyncio.to_thread(
            _precheck_decision, rt, principal, request_id, decision, comment
        )
    except OutOfScope as refused:
        await asyncio.to_thread(_record_out_of_scope, rt, principal, origin, refused, what)
        raise
    if decision == "approve":
        await asyncio.to_thread(_step_up, rt, principal, request_id, totp, origin)
    handle = rt.temporal.get_workflow_handle(approval_workflow_id(str(request_id)))
    delegation = approver.delegation
    command = DecisionInput(
        user=principal.username,
        user_id=principal.user_id,
        roles=sorted(approver.roles),
        decision=decision,
        comment=comment.strip(),
        origin=origin,
        team=approver.team,
        on_behalf_of=delegation.delegator_username if delegation else None,
        on_behalf_of_id=delegation.delegator_id if delegation else None,
        delegation_ends_at=delegation.ends_at if delegation else None,
        scopes=[ScopeInput.of(scope) for scope in approver.scopes],
    )
    try:
        await _send_update(handle.execute_update(ApprovalWorkflow.decide, command))
    except OutOfScope as refused:  # the workflow's validator re-checked and refused
        await asyncio.to_thread(_record_out_of_scope, rt, principal, origin, refused, what)
        raise
    return await asyncio.to_thread(load, rt, request_id)


async def cancel(
    rt: Runtime, principal: Principal, request_id: uuid.UUID, reason: str, origin: Origin
) -> ApprovalRequest:
    _check_text("reason", reason, MAX_REASON)

    def precheck() -> None:
        with rt.sessions() as session:
            request = visible_request(session, rt, principal, request_id)
            requester = principal.username if request.requester_id == principal.user_id else ""
            verdict = check_cancel(
                user=principal.username, requester=requester, status=request.status
            )
            if not verdict:
                raise refusal(verdict)

    await asyncio.to_thread(precheck)
    handle = rt.temporal.get_workflow_handle(approval_workflow_id(str(request_id)))
    command = CancelInput(
        user=principal.username, user_id=principal.user_id, reason=reason.strip(), origin=origin
    )
    await _send_update(handle.execute_update(ApprovalWorkflow.cancel, command))
    return await asyncio.to_thread(load, rt, request_id)

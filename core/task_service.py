"""The task queue: filters, claiming and releasing a task, deciding several tasks at once.

A claim is advisory ownership: the holder is working on the task, others still see it
(marked as taken) and may still decide it on its own page. A claim and its audit event are
written in one transaction that holds the request's audit stream head and the task row;
it takes them in the order the workflow's transition recorder does (stream head first, then
the read model), so a claim racing a decision on the same request waits instead of
deadlocking. `audit.append` itself serialises writers of one stream on that head row.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation

from sqlalchemy.orm import Session

from core import audit, request_service
from core.approvals import request_stream
from core.db import transaction
from core.events import notify_request_changed
from core.models import ApprovalRequest, Task, User
from core.repositories import requests as requests_repo
from core.repositories import users as users_repo
from core.repositories.requests import CLAIM_STATES, SLA_STATES, TaskFilters
from core.repositories.scope import PlayerScope
from core.request_service import MAX_COMMENT, RequestError, refusal, text_problem
from core.runtime import Runtime
from policies.engine import parse_duration
from policies.snapshot import Principal
from workflows.contracts import Origin

# Who may release a task someone else holds (a team lead freeing a stuck task).
REASSIGN_PERMISSION = "tasks:reassign"
MAX_BULK_ITEMS = 100
SCOPES = ("mine", "team")


# --- filters -------------------------------------------------------------------------

# Beyond these no task can match, and the database could not compare them anyway.
LARGEST_FILTER_AMOUNT = Decimal("10000000000000")
LONGEST_FILTER_AGE = timedelta(days=3650)


def _amount(name: str, raw: str | None, errors: dict[str, str]) -> Decimal | None:
    if raw is None or not raw.strip():
        return None
    try:
        value = Decimal(raw.strip())
    except InvalidOperation:
        errors[name] = "must be a number"
        return None
    if not value.is_finite() or not 0 <= value <= LARGEST_FILTER_AMOUNT:
        errors[name] = f"must be a number from 0 to {LARGEST_FILTER_AMOUNT:,}"
        return None
    return value


def parse_filters(
    rt: Runtime,
    *,
    action: str | None = None,
    min_amount: str | None = None,
    max_amount: str | None = None,
    sla: str | None = None,
    older_than: str | None = None,
    claim: str | None = None,
) -> TaskFilters:
    """Queue filters from query strings; a RequestError (422) names every bad one."""
    errors: dict[str, str] = {}
    action = (action or "").strip() or None
    if action is not None and action not in rt.policy.actions:
        errors["action"] = "is not an action of the catalogue"
    low = _amount("min_amount", min_amount, errors)
    high = _amount("max_amount", max_amount, errors)
    if low is not None and high is not None and low > high:
        errors["max_amount"] = "must not be below min_amount"
    sla = (sla or "").strip() or None
    if sla is not None and sla not in SLA_STATES:
        errors["sla"] = f"must be one of {', '.join(SLA_STATES)}"
    claim = (claim or "").strip() or None
    if claim is not None and claim not in CLAIM_STATES:
        errors["claim"] = f"must be one of {', '.join(CLAIM_STATES)}"
    age = None
    if older_than is not None and older_than.strip():
        try:
            age = parse_duration(older_than.strip())
        except ValueError:
            errors["older_than"] = "must be a duration like 30m, 4h or 2d"
        else:
            if age > LONGEST_FILTER_AGE.total_seconds():
                errors["older_than"] = f"must be at most {LONGEST_FILTER_AGE.days} days"
    if errors:
        raise RequestError(422, "; ".join(f"{k} {v}" for k, v in errors.items()), errors)
    return TaskFilters(
        action=action,
        min_amount=low,
        max_amount=high,
        sla=sla,
        older_than=timedelta(seconds=age) if age is not None else None,
        claim=claim,
    )


# --- claim and release ------------------------------------------------------------------


def _visible_task(
    session: Session, rt: Runtime, principal: Principal, task_id: int
) -> tuple[Task, ApprovalRequest]:
    """The task and its request, if the person may see the request; else 404, as if absent."""
    task = requests_repo.get_task(session, task_id)
    if task is None:
        raise RequestError(404, "task not found")
    try:
        request = request_service.visible_request(session, rt, principal, task.request_id)
    except RequestError:
        raise RequestError(404, "task not found") from None
    return task, request


def _locked_open_task(
    session: Session, rt: Runtime, principal: Principal, task_id: int
) -> tuple[Task, ApprovalRequest]:
    """The task locked for this transaction, and its request, if the person may see the
    request (else 404) and the step is still open (else 409)."""
    task, request = _visible_task(session, rt, principal, task_id)
    requests_repo.lock_audit_stream(session, request_stream(task.request_id))
    locked = requests_repo.task_for_update(session, task_id)
    assert locked is not None  # tasks are never deleted while their request exists
    _require_open(locked, request)
    return locked, request


def _require_open(task: Task, request: ApprovalRequest) -> None:
    if task.status != requests_repo.OPEN or request.status != "pending":
        raise RequestError(
            409, f"step '{task.name}' is no longer open (the request is {request.status})"
        )


def _holder_text(session: Session, user_id: int) -> str:
    holder = users_repo.by_id(session, user_id)
    return f"{holder.display_name} ({holder.username})" if holder else "someone else"


def _record(
    session: Session,
    principal: Principal,
    origin: Origin,
    task: Task,
    action: str,
    holder_before: str | None,
    holder_after: str | None,
) -> None:
    audit.append_from(
        session,
        origin,
        stream=request_stream(task.request_id),
        action=action,
        target=request_stream(task.request_id),
        actor=principal.username,
        before={"claimed_by": holder_before},
        after={
            "claimed_by": holder_after,
            "task_id": task.id,
            "step": task.step_index,
            "step_name": task.name,
        },
    )
    notify_request_changed(session, task.request_id, action.replace(".", "_"))


def claim(rt: Runtime, principal: Principal, task_id: int, origin: Origin) -> None:
    """Take a task one could decide now. Claiming one's own claim again changes nothing."""
    with transaction(rt.sessions) as session:
        task, request = _locked_open_task(session, rt, principal, task_id)
        if task.claimed_by_id == principal.user_id:
            return
        if task.claimed_by_id is not None:
            raise RequestError(
                409, f"this task is already taken by {_holder_text(session, task.claimed_by_id)}"
            )
        verdict, _ = request_service.decision_eligibility(session, rt, principal, request)
        if not verdict:
            raise refusal(verdict)
        requests_repo.set_claim(session, task, principal.user_id, datetime.now(UTC))
        _record(session, principal, origin, task, "task.claimed", None, principal.username)


def release(rt: Runtime, principal: Principal, task_id: int, origin: Origin) -> None:
    """Give a task back: its holder may, and so may a holder of tasks:reassign."""
    with transaction(rt.sessions) as session:
        task, _ = _locked_open_task(session, rt, principal, task_id)
        if task.claimed_by_id is None:
            raise RequestError(409, "this task is not claimed by anyone")
        holder = users_repo.by_id(session, task.claimed_by_id)
        holder_name = holder.username if holder else None
        if task.claimed_by_id != principal.user_id and not rt.policy.authorize(
            principal, REASSIGN_PERMISSION
        ):
            raise RequestError(
                403,
                f"only {_holder_text(session, task.claimed_by_id)}, who holds this task, "
                f"or a holder of '{REASSIGN_PERMISSION}' can release it",
            )
        requests_repo.set_claim(session, task, None, None)
        _record(session, principal, origin, task, "task.released", holder_name, None)


# --- bulk decisions ---------------------------------------------------------------------


@dataclass(frozen=True)
class BulkProblem:
    """Why one item of a batch cannot be decided; the batch is refused as a whole."""

    task_id: int
    status: int
    detail: str
    label: str = ""  # the request's action and target, when the person may see it


@dataclass
class BulkRefused(Exception):
    detail: str
    problems: list[BulkProblem]

    def __str__(self) -> str:
        return self.detail


@dataclass(frozen=True)
class BulkOutcome:
    task_id: int
    request_id: uuid.UUID
    decided: bool
    request_status: str | None = None
    error_status: int | None = None
    detail: str | None = None
    label: str = ""


def bulk_allowed(rt: Runtime, request: ApprovalRequest) -> bool:
    """The chain snapshot says so (older snapshots without the flag: today's policy)."""
    if "bulk_decisions" in request.chain:
        return bool(request.chain["bulk_decisions"])
    definition = rt.policy.chain_definition(request.action)
    return bool(definition and definition.bulk_decisions)


def _item_problem(
    session: Session, rt: Runtime, principal: Principal, task_id: int
) -> tuple[BulkProblem | None, tuple[uuid.UUID, str] | None]:
    try:
        task, request = _visible_task(session, rt, principal, task_id)
        _require_open(task, request)
        if task.step_index != request.current_step:
            raise RequestError(409, f"step '{task.name}' is not the request's current step")
    except RequestError as err:
        return BulkProblem(task_id, err.status, err.detail), None
    label = f"{request.action} {request.target}"
    if not bulk_allowed(rt, request):
        detail = f"{request.action} requests must be decided one at a time"
        return BulkProblem(task_id, 422, detail, label), None
    if task.claimed_by_id not in (None, principal.user_id):
        detail = f"taken by {_holder_text(session, task.claimed_by_id)}; decide it on its own"
        return BulkProblem(task_id, 409, detail, label), None
    verdict, _ = request_service.decision_eligibility(session, rt, principal, request)
    if not verdict:
        return BulkProblem(task_id, refusal(verdict).status, verdict.reason, label), None
    return None, (request.id, label)


def validate_bulk(
    rt: Runtime, principal: Principal, task_ids: list[int], decision: str, comment: str
) -> list[tuple[int, uuid.UUID, str]]:
    """Every item checked before anything is decided; BulkRefused lists each bad one."""
    if decision not in ("approve", "reject"):
        raise RequestError(422, "decision must be 'approve' or 'reject'", {"decision": "invalid"})
    if not task_ids:
        raise RequestError(422, "choose at least one task", {"task_ids": "empty"})
    if len(task_ids) > MAX_BULK_ITEMS:
        raise RequestError(422, f"at most {MAX_BULK_ITEMS} tasks at once", {"task_ids": "long"})
    if len(set(task_ids)) != len(task_ids):
        raise RequestError(422, "a task is listed twice", {"task_ids": "duplicate"})
    if (problem := text_problem(comment, MAX_COMMENT)) is not None:
        raise RequestError(422, f"comment: {problem}", {"comment": problem})
    problems: list[BulkProblem] = []
    items: list[tuple[int, uuid.UUID, str]] = []
    with rt.sessions() as session:
        for task_id in task_ids:
            problem_found, item = _item_problem(session, rt, principal, task_id)
            if problem_found is not None:
                problems.append(problem_found)
            elif item is not None:
                items.append((task_id, *item))
    if problems:
        raise BulkRefused(
            f"{len(problems)} of {len(task_ids)} tasks cannot be decided together; "
            "nothing was decided",
            problems,
        )
    return items


async def bulk_decide(
    rt: Runtime,
    principal: Principal,
    task_ids: list[int],
    decision: str,
    comment: str,
    origin: Origin,
) -> list[BulkOutcome]:
    """Validate all, then decide each with the one comment; a late refusal is per item."""
    items = await asyncio.to_thread(validate_bulk, rt, principal, task_ids, decision, comment)
    outcomes: list[BulkOutcome] = []
    for task_id, request_id, label in items:
        try:
            decided = await request_service.decide(
                rt, principal, request_id, decision, comment, origin
            )
        except RequestError as err:
            outcomes.append(
                BulkOutcome(task_id, request_id, False, None, err.status, err.detail, label)
            )
            continue
        outcomes.append(BulkOutcome(task_id, request_id, True, decided.status, label=label))
    return outcomes


# --- the queues -------------------------------------------------------------------------


def queue_rows(
    rt: Runtime,
    session: Session,
    user: User,
    principal: Principal,
    scope: str,
    filters: TaskFilters,
    after: requests_repo.TaskCursor | None = None,
    limit: int = 50,
) -> list[requests_repo.TaskRow]:
    """My queue (what I may decide, whoever holds it) or my team's, due soonest first."""
    if scope not in SCOPES:
        raise RequestError(422, f"scope must be one of {', '.join(SCOPES)}", {"scope": "invalid"})
    data_scope = PlayerScope.of(request_service.data_scope(rt, principal))
    if scope == "team":
        if not user.team:
            raise RequestError(422, "you are in no team, so there is no team queue")
        sees_all = rt.policy.authorize(principal, request_service.VIEW_ALL)
        return requests_repo.team_queue(
            session,
            team=user.team,
            viewer_id=user.id,
            viewer_roles=None if sees_all else request_service.decider_roles(session, principal),
            filters=filters,
            scope=data_scope,
            after=after,
            limit=limit,
        )
    return requests_repo.task_queue(
        session,
        user_id=user.id,
        roles=request_service.decider_roles(session, principal),
        team=user.team,
        filters=filters,
        scope=data_scope,
        after=after,
        limit=limit,
    )

"""The approval read model: requests, their steps (tasks), decisions and notifications."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    String,
    and_,
    cast,
    exists,
    func,
    literal,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.orm import Session, aliased

from core.models import (
    ApprovalRequest,
    AuditStreamHead,
    Decision,
    Notification,
    Task,
    User,
    UserRole,
)
from core.repositories.payments import OPEN_REQUEST_STATUSES
from core.repositories.scope import EVERY_PLAYER, PlayerScope
from core.repositories.text_search import matches_any

OPEN = "open"


def get(session: Session, request_id: uuid.UUID) -> ApprovalRequest | None:
    return session.get(ApprovalRequest, request_id)


def get_for_update(session: Session, request_id: uuid.UUID) -> ApprovalRequest | None:
    return session.execute(
        select(ApprovalRequest).where(ApprovalRequest.id == request_id).with_for_update()
    ).scalar_one_or_none()


def steps(session: Session, request_id: uuid.UUID) -> list[Task]:
    stmt = select(Task).where(Task.request_id == request_id).order_by(Task.step_index)
    return list(session.execute(stmt).scalars())


def decisions(session: Session, request_id: uuid.UUID) -> list[tuple[Decision, str]]:
    stmt = (
        select(Decision, User.username)
        .join(User, User.id == Decision.user_id)
        .where(Decision.request_id == request_id)
        .order_by(Decision.decided_at, Decision.id)
    )
    return [(row[0], row[1]) for row in session.execute(stmt)]


def pending_for_target(session: Session, action: str, target: str) -> ApprovalRequest | None:
    stmt = select(ApprovalRequest).where(
        ApprovalRequest.action == action,
        ApprovalRequest.target == target,
        ApprovalRequest.status.in_(OPEN_REQUEST_STATUSES),
    )
    return session.execute(stmt.limit(1)).scalar_one_or_none()


def visible_to(user_id: int, roles: Collection[str]) -> ColumnElement[bool]:
    """SQL: the request is this person's, holds a step for one of their roles, or they
    decided on it."""
    step = aliased(Task)
    approver = select(step.id).where(
        step.request_id == ApprovalRequest.id, step.roles.overlap(list(roles) or [""])
    )
    decided = select(Decision.id).where(
        Decision.request_id == ApprovalRequest.id, Decision.user_id == user_id
    )
    return or_(
        ApprovalRequest.requester_id == user_id,
        approver.correlate(ApprovalRequest).exists(),
        decided.correlate(ApprovalRequest).exists(),
    )


def can_view(
    session: Session, request: ApprovalRequest, user_id: int, roles: Collection[str]
) -> bool:
    """The requester, anyone who holds a role of one of its steps, or who decided on it."""
    stmt = select(exists().where(ApprovalRequest.id == request.id, visible_to(user_id, roles)))
    return bool(session.execute(stmt).scalar())


# --- lists ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskRow:
    task: Task
    request: ApprovalRequest
    requester: str
    # Who holds the task (username, display name); None when nobody has claimed it.
    claimed_by: str | None = None
    claimed_by_name: str | None = None


@dataclass(frozen=True)
class TaskCursor:
    due_at: datetime
    task_id: int


SLA_STATES = ("on_time", "due_soon", "breached")
CLAIM_STATES = ("mine", "unclaimed", "others")
# A task is "due soon" once less than this share of its step's SLA is left.
DUE_SOON_SHARE = 0.25


@dataclass(frozen=True)
class TaskFilters:
    """Narrowing of a queue; every field is optional and they combine with AND."""

    action: str | None = None
    min_amount: Decimal | None = None
    max_amount: Decimal | None = None
    sla: str | None = None  # one of SLA_STATES
    older_than: timedelta | None = None  # open for at least this long
    claim: str | None = None  # one of CLAIM_STATES, as seen by the viewer
    task_ids: Collection[int] | None = None


def sla_state(task: Task, now: datetime) -> str:
    """The same three states the `sla` filter selects, for one task."""
    if task.sla_breached_at is not None or (task.due_at is not None and task.due_at <= now):
        return "breached"
    if task.due_at is not None and (task.due_at - now).total_seconds() < (
        task.sla_seconds * DUE_SOON_SHARE
    ):
        return "due_soon"
    return "on_time"


def _sla_condition(state: str, now: datetime) -> ColumnElement[bool]:
    breached = or_(Task.sla_breached_at.is_not(None), Task.due_at <= now)
    soon = Task.due_at - now < func.make_interval(
        0, 0, 0, 0, 0, 0, Task.sla_seconds * DUE_SOON_SHARE
    )
    if state == "breached":
        return breached
    if state == "due_soon":
        return and_(~breached, soon)
    return and_(~breached, ~soon)


def _apply_filters(
    stmt: _QueueSelect, filters: TaskFilters, viewer_id: int, now: datetime
) -> _QueueSelect:
    if filters.action is not None:
        stmt = stmt.where(ApprovalRequest.action == filters.action)
    if filters.min_amount is not None:
        stmt = stmt.where(ApprovalRequest.amount >= filters.min_amount)
    if filters.max_amount is not None:
        stmt = stmt.where(ApprovalRequest.amount <= filters.max_amount)
    if filters.sla is not None:
        stmt = stmt.where(_sla_condition(filters.sla, now))
    if filters.older_than is not None:
        stmt = stmt.where(Task.opened_at <= now - filters.older_than)
    if filters.claim == "mine":
        stmt = stmt.where(Task.claimed_by_id == viewer_id)
    elif filters.claim == "unclaimed":
        stmt = stmt.where(Task.claimed_by_id.is_(None))
    elif filters.claim == "others":
        stmt = stmt.where(Task.claimed_by_id.is_not(None), Task.claimed_by_id != viewer_id)
    if filters.task_ids is not None:
        stmt = stmt.where(Task.id.in_(list(filters.task_ids) or [-1]))
    return stmt


def _step_excludes_requester_team() -> ColumnElement[bool]:
    """The open step's snapshot says nobody from the requester's team may decide it."""
    flag = (
        ApprovalRequest.chain["steps"].op("->")(Task.step_index).op("->>")("outside_requester_team")
    )
    return func.coalesce(flag, "false") == "true"


# task, its request, requester's username, holder's username and display name
_QueueSelect = Select[Task, ApprovalRequest, str, str, str]


def _queue_select(after: TaskCursor | None, limit: int) -> tuple[_QueueSelect, type[User]]:
    requester = aliased(User)
    claimer = aliased(User)
    stmt = (
        select(Task, ApprovalRequest, requester.username, claimer.username, claimer.display_name)
        .join(ApprovalRequest, ApprovalRequest.id == Task.request_id)
        .join(requester, requester.id == ApprovalRequest.requester_id)
        .outerjoin(claimer, claimer.id == Task.claimed_by_id)
        .where(Task.status == OPEN, ApprovalRequest.status == "pending")
        .order_by(Task.due_at, Task.id)
        .limit(limit)
    )
    if after is not None:
        stmt = stmt.where(
            or_(
                Task.due_at > after.due_at,
                and_(Task.due_at == after.due_at, Task.id > after.task_id),
            )
        )
    return stmt, requester


def _rows(session: Session, stmt: _QueueSelect) -> list[TaskRow]:
    return [
        TaskRow(task, request, requester, claimed_by, claimed_by_name)
        for task, request, requester, claimed_by, claimed_by_name in session.execute(stmt)
    ]


def task_queue(
    session: Session,
    *,
    user_id: int,
    roles: Collection[str],
    team: str | None = None,
    filters: TaskFilters | None = None,
    scope: PlayerScope = EVERY_PLAYER,
    after: TaskCursor | None = None,
    limit: int = 50,
    now: datetime | None = None,
) -> list[TaskRow]:
    """Open steps the user may decide on now, whoever holds them: due soonest first.

    `team` is the user's own team: a step closed to the requester's team is left out;
    `scope` is the user's data scope: a request about a player outside it, or above its
    limit, is left out.
    """
    already_decided = exists().where(
        Decision.request_id == Task.request_id, Decision.user_id == user_id
    )
    stmt, requester = _queue_select(after, limit)
    stmt = stmt.where(
        Task.roles.overlap(list(roles) or [""]),
        ApprovalRequest.requester_id != user_id,
        ~already_decided,
    )
    if team is not None:
        stmt = stmt.where(~and_(_step_excludes_requester_team(), requester.team == team))
    for condition in scope.request_conditions(with_amount=True):
        if condition is not None:
            stmt = stmt.where(condition)
    stmt = _apply_filters(stmt, filters or TaskFilters(), user_id, now or datetime.now(UTC))
    return _rows(session, stmt)


@dataclass(frozen=True)
class RequestCursor:
    created_at: datetime
    request_id: uuid.UUID


def created_before(cursor: RequestCursor | None) -> ColumnElement[bool] | None:
    """Requests after this cursor in newest-first order (keyset pagination)."""
    if cursor is None:
        return None
    return tuple_(ApprovalRequest.created_at, ApprovalRequest.id) < tuple_(
        literal(cursor.created_at), literal(cursor.request_id)
    )


def request_page(
    session: Session,
    *,
    requester_id: int | None,
    scope: PlayerScope = EVERY_PLAYER,
    status: str | None = None,
    action: str | None = None,
    policy_version: str | None = None,
    query: str | None = None,
    before: RequestCursor | None = None,
    limit: int = 50,
) -> list[tuple[ApprovalRequest, str]]:
    """Newest first. `requester_id=None` lists everyone's (for roles that may see all);
    `scope` leaves out requests about players outside it; `query` matches the target or
    the request id."""
    stmt = (
        select(ApprovalRequest, User.username)
        .join(User, User.id == ApprovalRequest.requester_id)
        .order_by(ApprovalRequest.created_at.desc(), ApprovalRequest.id.desc())
        .limit(limit)
    )
    for condition in (
        None if requester_id is None else ApprovalRequest.requester_id == requester_id,
        None if status is None else ApprovalRequest.status == status,
        None if action is None else ApprovalRequest.action == action,
        None if policy_version is None else ApprovalRequest.policy_version == policy_version,
        matches_any(query, ApprovalRequest.target, cast(ApprovalRequest.id, String)),
        created_before(before),
        *scope.request_conditions(with_amount=False),
    ):
        if condition is not None:
            stmt = stmt.where(condition)
    return [(request, username) for request, username in session.execute(stmt)]


def notifications_for(
    session: Session, *, user_id: int, roles: Collection[str], limit: int = 20
) -> list[Notification]:
    stmt = (
        select(Notification)
        .where(
            or_(
                Notification.recipient_user_id == user_id,
                Notification.recipient_role.in_(list(roles) or [""]),
            )
        )
        .order_by(Notification.id.desc())
        .limit(limit)
    )
    return list(session.execute(stmt).scalars())


# --- writes (called only from the transition recorder) ----------------------------------


def insert_request(
    session: Session,
    *,
    request_id: uuid.UUID,
    workflow_id: str,
    action: str,
    target: str,
    params: dict[str, Any],
    reason: str,
    requester_id: int,
    policy_version: str,
    chain: dict[str, Any],
    created_at: datetime,
    expires_at: datetime,
    region: str | None = None,
    segment: str | None = None,
) -> None:
    amount = params.get("amount")
    session.add(
        ApprovalRequest(
            id=request_id,
            workflow_id=workflow_id,
            action=action,
            target=target,
            params=params,
            amount=Decimal(amount) if amount is not None else None,
            reason=reason,
            requester_id=requester_id,
            region=region,
            segment=segment,
            status="pending",
            policy_version=policy_version,
            chain=chain,
            current_step=0,
            created_at=created_at,
            updated_at=created_at,
            expires_at=expires_at,
        )
    )
    session.flush()
    for index, step in enumerate(chain["steps"]):
        session.add(
            Task(
                request_id=request_id,
                step_index=index,
                name=step["name"],
                roles=list(step["roles"]),
                required_approvals=step["approvals"],
                approvals=0,
                status="waiting",
                sla_seconds=step["sla_seconds"],
            )
        )
    session.flush()


def set_request_status(
    session: Session,
    request_id: uuid.UUID,
    *,
    status: str,
    at: datetime,
    outcome: str | None = None,
    terminal: bool = False,
    revert_at: datetime | None = None,
) -> None:
    values: dict[str, Any] = {"status": status, "updated_at": at}
    if outcome is not None:
        values["outcome"] = outcome
    if revert_at is not None:
        values["revert_at"] = revert_at
    if terminal:
        values["completed_at"] = at
    session.execute(update(ApprovalRequest).where(ApprovalRequest.id == request_id).values(values))


def open_step(
    session: Session, request_id: uuid.UUID, step_index: int, at: datetime, due_at: datetime
) -> None:
    session.execute(
        update(Task)
        .where(Task.request_id == request_id, Task.step_index == step_index)
        .values(status=OPEN, opened_at=at, due_at=due_at)
    )
    session.execute(
        update(ApprovalRequest)
        .where(ApprovalRequest.id == request_id)
        .values(current_step=step_index, updated_at=at)
    )


def close_step(
    session: Session, request_id: uuid.UUID, step_index: int, status: str, at: datetime
) -> None:
    session.execute(
        update(Task)
        .where(Task.request_id == request_id, Task.step_index == step_index)
        .values(status=status, closed_at=at)
    )


def close_remaining_steps(
    session: Session, request_id: uuid.UUID, status: str, at: datetime
) -> None:
    """The open step takes the request's final status; steps never reached are cancelled."""
    session.execute(
        update(Task)
        .where(Task.request_id == request_id, Task.status == OPEN)
        .values(status=status, closed_at=at)
    )
    session.execute(
        update(Task)
        .where(Task.request_id == request_id, Task.status == "waiting")
        .values(status="cancelled", closed_at=at)
    )


def add_decision(
    session: Session,
    *,
    request_id: uuid.UUID,
    step_index: int,
    user_id: int,
    decision: str,
    comment: str,
    channel: str,
    at: datetime,
    on_behalf_of_id: int | None = None,
) -> None:
    session.add(
        Decision(
            request_id=request_id,
            step_index=step_index,
            user_id=user_id,
            on_behalf_of_id=on_behalf_of_id,
            decision=decision,
            comment=comment,
            channel=channel,
            decided_at=at,
        )
    )
    if decision == "approve":
        session.execute(
            update(Task)
            .where(Task.request_id == request_id, Task.step_index == step_index)
            .values(approvals=Task.approvals + 1)
        )
    session.flush()


def mark_sla_breached(
    session: Session, request_id: uuid.UUID, step_index: int, at: datetime
) -> None:
    session.execute(
        update(Task)
        .where(Task.request_id == request_id, Task.step_index == step_index)
        .values(sla_breached_at=at)
    )


def record_revert(
    session: Session, request_id: uuid.UUID, at: datetime, outcome: str, *, reverted: bool
) -> None:
    values: dict[str, Any] = {"updated_at": at, "outcome": outcome}
    if reverted:
        values["reverted_at"] = at
    session.execute(update(ApprovalRequest).where(ApprovalRequest.id == request_id).values(values))


def add_notification(
    session: Session,
    *,
    event_id: uuid.UUID,
    request_id: uuid.UUID,
    kind: str,
    message: str,
    at: datetime,
    role: str | None = None,
    user_id: int | None = None,
) -> None:
    session.add(
        Notification(
            event_id=event_id,
            recipient_role=role,
            recipient_user_id=user_id,
            request_id=request_id,
            kind=kind,
            message=message,
            created_at=at,
        )
    )


def count_by_status(session: Session) -> dict[str, int]:
    rows = session.execute(
        select(ApprovalRequest.status, func.count()).group_by(ApprovalRequest.status)
    )
    return {status: count for status, count in rows}


# --- the team queue and claims ----------------------------------------------------------


def team_queue(
    session: Session,
    *,
    team: str,
    viewer_id: int,
    viewer_roles: Collection[str] | None,
    filters: TaskFilters | None = None,
    scope: PlayerScope = EVERY_PLAYER,
    after: TaskCursor | None = None,
    limit: int = 50,
    now: datetime | None = None,
) -> list[TaskRow]:
    """Open steps some member of `team` could decide now, or that a member holds; only of
    requests the viewer may see (`viewer_roles` None: every request) about players in the
    viewer's `scope`."""
    member = aliased(User)
    stmt, requester = _queue_select(after, limit)
    holds_a_step_role = (
        select(UserRole.user_id)
        .where(UserRole.user_id == member.id, UserRole.role == func.any(Task.roles))
        .correlate(member, Task)
        .exists()
    )
    decided_already = (
        select(Decision.id)
        .where(Decision.request_id == Task.request_id, Decision.user_id == member.id)
        .correlate(member, Task)
        .exists()
    )
    member_could_decide = (
        select(member.id)
        .where(
            member.team == team,
            member.is_active.is_(True),
            member.id != ApprovalRequest.requester_id,
            holds_a_step_role,
            ~decided_already,
        )
        .correlate(Task, ApprovalRequest)
        .exists()
    )
    team_may_decide = and_(
        member_could_decide,
        ~and_(_step_excludes_requester_team(), requester.team == team),
    )
    held_by_member = exists().where(User.id == Task.claimed_by_id, User.team == team)
    stmt = stmt.where(or_(team_may_decide, held_by_member))
    if viewer_roles is not None:
        stmt = stmt.where(visible_to(viewer_id, viewer_roles))
    for condition in scope.request_conditions(with_amount=False):
        if condition is not None:
            stmt = stmt.where(condition)
    stmt = _apply_filters(stmt, filters or TaskFilters(), viewer_id, now or datetime.now(UTC))
    return _rows(session, stmt)


def task_for_update(session: Session, task_id: int) -> Task | None:
    """The task row, locked until the transaction ends (claims and releases serialise on it)."""
    return session.execute(
        select(Task)
        .where(Task.id == task_id)
        .with_for_update()
        .execution_options(populate_existing=True)  # what was read before the lock is stale
    ).scalar_one_or_none()


def get_task(session: Session, task_id: int) -> Task | None:
    return session.get(Task, task_id)


def set_claim(session: Session, task: Task, user_id: int | None, at: datetime | None) -> None:
    task.claimed_by_id = user_id
    task.claimed_at = at
    session.flush()


def lock_audit_stream(session: Session, stream: str) -> None:
    """Lock a request's audit stream head, the row the transition recorder locks first.

    Taking it before the task row keeps one lock order for claims and workflow writes.
    """
    session.execute(
        select(AuditStreamHead.stream).where(AuditStreamHead.stream == stream).with_for_update()
    )


def task_row(session: Session, task_id: int) -> TaskRow | None:
    """One open task as the queues show it (with its holder)."""
    stmt, _ = _queue_select(None, 1)
    rows = _rows(
        session, _apply_filters(stmt, TaskFilters(task_ids=[task_id]), 0, datetime.now(UTC))
    )
    return rows[0] if rows else None

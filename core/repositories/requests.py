"""The approval read model: requests, their steps (tasks), decisions and notifications."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.orm import Session

from core.models import ApprovalRequest, Decision, Notification, Task, User
from core.repositories.payments import OPEN_REQUEST_STATUSES

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


def can_view(
    session: Session, request: ApprovalRequest, user_id: int, roles: Collection[str]
) -> bool:
    """The requester, anyone who holds a role of one of its steps, or who decided on it."""
    if request.requester_id == user_id:
        return True
    approver = select(Task.id).where(
        Task.request_id == request.id, Task.roles.overlap(list(roles) or [""])
    )
    decided = select(Decision.id).where(
        Decision.request_id == request.id, Decision.user_id == user_id
    )
    return bool(session.execute(select(exists(approver) | exists(decided))).scalar())


# --- lists ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskRow:
    task: Task
    request: ApprovalRequest
    requester: str


@dataclass(frozen=True)
class TaskCursor:
    due_at: datetime
    task_id: int


def task_queue(
    session: Session,
    *,
    user_id: int,
    roles: Collection[str],
    after: TaskCursor | None = None,
    limit: int = 50,
) -> list[TaskRow]:
    """Open steps the user may decide on now: due soonest first."""
    already_decided = exists().where(
        Decision.request_id == Task.request_id, Decision.user_id == user_id
    )
    stmt = (
        select(Task, ApprovalRequest, User.username)
        .join(ApprovalRequest, ApprovalRequest.id == Task.request_id)
        .join(User, User.id == ApprovalRequest.requester_id)
        .where(
            Task.status == OPEN,
            ApprovalRequest.status == "pending",
            Task.roles.overlap(list(roles) or [""]),
            ApprovalRequest.requester_id != user_id,
            ~already_decided,
        )
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
    return [TaskRow(task, request, requester) for task, request, requester in session.execute(stmt)]


@dataclass(frozen=True)
class RequestCursor:
    created_at: datetime
    request_id: uuid.UUID


def request_page(
    session: Session,
    *,
    requester_id: int | None,
    status: str | None = None,
    action: str | None = None,
    before: RequestCursor | None = None,
    limit: int = 50,
) -> list[tuple[ApprovalRequest, str]]:
    """Newest first. `requester_id=None` lists everyone's (for roles that may see all)."""
    stmt = (
        select(ApprovalRequest, User.username)
        .join(User, User.id == ApprovalRequest.requester_id)
        .order_by(ApprovalRequest.created_at.desc(), ApprovalRequest.id.desc())
        .limit(limit)
    )
    if requester_id is not None:
        stmt = stmt.where(ApprovalRequest.requester_id == requester_id)
    if status is not None:
        stmt = stmt.where(ApprovalRequest.status == status)
    if action is not None:
        stmt = stmt.where(ApprovalRequest.action == action)
    if before is not None:
        stmt = stmt.where(
            or_(
                ApprovalRequest.created_at < before.created_at,
                and_(
                    ApprovalRequest.created_at == before.created_at,
                    ApprovalRequest.id < before.request_id,
                ),
            )
        )
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

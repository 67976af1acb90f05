"""API schemas (separate from ORM models) and the builders that fill them."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy.orm import Session

from api.deps import MAX_ROW_ID
from core.models import ApprovalRequest, AuditEvent, Task
from core.repositories import requests as requests_repo
from core.repositories import users as users_repo
from core.request_service import CONTROL_CHARACTERS
from policies.snapshot import DataScope

T = TypeVar("T")
R = TypeVar("R")


RowId = Annotated[int, Field(ge=1, le=MAX_ROW_ID)]


class InputModel(BaseModel):
    """A request body: unknown keys refused, and no text that PostgreSQL cannot store
    (NUL) or that hides what it says (control characters)."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*")
    @classmethod
    def _storable_text(cls, value: Any) -> Any:
        if isinstance(value, str) and CONTROL_CHARACTERS.intersection(value):
            raise ValueError("contains control characters")
        return value


class TokenRequest(InputModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=256)
    totp: str | None = Field(default=None, max_length=16)


class RefreshRequest(InputModel):
    refresh_token: str = Field(min_length=1, max_length=4096)


class TokenResponse(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int


class MeOut(BaseModel):
    id: int
    username: str
    display_name: str
    department: str
    roles: list[str]
    workspaces: list[str]
    scope: ScopeOut


class RequestCreate(InputModel):
    action: str = Field(min_length=1, max_length=64, examples=["payment.withdrawal"])
    target: str = Field(min_length=1, max_length=64, examples=["PAY-0000001"])
    params: dict[str, Any] = Field(default_factory=dict, examples=[{"amount": "2500.00"}])
    reason: str = Field(min_length=1, max_length=2000)


class DecisionCreate(InputModel):
    decision: Literal["approve", "reject"]
    comment: str = Field(default="", max_length=2000)
    # A fresh authenticator code, needed when approving a high-risk request (step-up MFA).
    totp: str | None = Field(default=None, max_length=16)


class CancelCreate(InputModel):
    reason: str = Field(default="", max_length=2000)


class StepOut(BaseModel):
    index: int
    name: str
    roles: list[str]
    required_approvals: int
    approvals: int
    status: str
    opened_at: datetime | None
    due_at: datetime | None
    sla_breached: bool
    sla_breached_at: datetime | None
    closed_at: datetime | None


class DecisionOut(BaseModel):
    user: str
    on_behalf_of: str | None = None  # the absent approver, when decided under a delegation
    step: int
    decision: str
    comment: str
    channel: str
    decided_at: datetime


class RequestOut(BaseModel):
    id: uuid.UUID
    action: str
    target: str
    params: dict[str, Any]
    amount: Decimal | None
    reason: str
    requester: str
    status: str
    policy_version: str
    tier: str
    current_step: int
    created_at: datetime
    updated_at: datetime
    expires_at: datetime
    completed_at: datetime | None
    outcome: str | None
    revert_at: datetime | None = None
    reverted_at: datetime | None = None
    steps: list[StepOut]
    decisions: list[DecisionOut]


class RequestSummary(BaseModel):
    id: uuid.UUID
    action: str
    target: str
    amount: Decimal | None
    requester: str
    status: str
    created_at: datetime
    updated_at: datetime


class TaskOut(BaseModel):
    task_id: int
    request_id: uuid.UUID
    action: str
    target: str
    amount: Decimal | None
    requester: str
    reason: str
    step: int
    step_name: str
    required_approvals: int
    approvals: int
    due_at: datetime | None
    sla_breached: bool
    opened_at: datetime | None = None
    sla_state: str = "on_time"  # on_time, due_soon or breached
    claimed_by: str | None = None  # username of who took the task, if anyone
    claimed_by_name: str | None = None
    claimed_at: datetime | None = None


class PaymentOut(BaseModel):
    id: str
    player_id: str
    player: str
    region: str
    kind: str
    amount: Decimal
    currency: str
    method: str
    status: str
    created_at: datetime
    paid_at: datetime | None


class AuditEventOut(BaseModel):
    id: int
    event_id: uuid.UUID
    stream: str
    seq: int
    occurred_at: datetime
    actor: str
    actor_type: str
    channel: str
    ip: str | None
    action: str
    target: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    sensitivity: str
    prev_hash: str
    hash: str


class Page(BaseModel, Generic[T]):
    items: list[T]
    next: str | None

    @classmethod
    def from_rows(
        cls, rows: Sequence[R], limit: int, item: Callable[[R], T], cursor: Callable[[R], object]
    ) -> Page[T]:
        """A page from `limit + 1` rows: the extra one only says whether a next page exists,
        and the cursor is that of the last row shown."""
        return cls(
            items=[item(row) for row in rows[:limit]],
            next=str(cursor(rows[limit - 1])) if len(rows) > limit else None,
        )


def step_out(task: Task) -> StepOut:
    return StepOut(
        index=task.step_index,
        name=task.name,
        roles=list(task.roles),
        required_approvals=task.required_approvals,
        approvals=task.approvals,
        status=task.status,
        opened_at=task.opened_at,
        due_at=task.due_at,
        sla_breached=task.sla_breached_at is not None,
        sla_breached_at=task.sla_breached_at,
        closed_at=task.closed_at,
    )


def request_out(session: Session, request: ApprovalRequest) -> RequestOut:
    decisions = requests_repo.decisions(session, request.id)
    names = users_repo.usernames(
        session,
        [request.requester_id, *(d.on_behalf_of_id for d, _ in decisions if d.on_behalf_of_id)],
    )
    return RequestOut(
        id=request.id,
        action=request.action,
        target=request.target,
        params=request.params,
        amount=request.amount,
        reason=request.reason,
        requester=names[request.requester_id],
        status=request.status,
        policy_version=request.policy_version,
        tier=request.chain.get("tier", ""),
        current_step=request.current_step,
        created_at=request.created_at,
        updated_at=request.updated_at,
        expires_at=request.expires_at,
        completed_at=request.completed_at,
        outcome=request.outcome,
        revert_at=request.revert_at,
        reverted_at=request.reverted_at,
        steps=[step_out(task) for task in requests_repo.steps(session, request.id)],
        decisions=[
            DecisionOut(
                user=username,
                on_behalf_of=names.get(decision.on_behalf_of_id)
                if decision.on_behalf_of_id
                else None,
                step=decision.step_index,
                decision=decision.decision,
                comment=decision.comment,
                channel=decision.channel,
                decided_at=decision.decided_at,
            )
            for decision, username in decisions
        ],
    )


def task_out(row: requests_repo.TaskRow) -> TaskOut:
    return TaskOut(
        task_id=row.task.id,
        request_id=row.request.id,
        action=row.request.action,
        target=row.request.target,
        amount=row.request.amount,
        requester=row.requester,
        reason=row.request.reason,
        step=row.task.step_index,
        step_name=row.task.name,
        required_approvals=row.task.required_approvals,
        approvals=row.task.approvals,
        due_at=row.task.due_at,
        sla_breached=row.task.sla_breached_at is not None,
        opened_at=row.task.opened_at,
        sla_state=requests_repo.sla_state(row.task, datetime.now(UTC)),
        claimed_by=row.claimed_by,
        claimed_by_name=row.claimed_by_name,
        claimed_at=row.task.claimed_at,
    )


def audit_event_out(event: AuditEvent) -> AuditEventOut:
    return AuditEventOut.model_validate(event, from_attributes=True)


# --- roles catalogue and data scope ----------------------------------------------------


class ScopeOut(BaseModel):
    """Regions and player segments reached ("*" for all), and the value limit (null: none)."""

    regions: list[str] | Literal["*"]
    segments: list[str] | Literal["*"]
    max_amount: Decimal | None


class RoleOut(BaseModel):
    name: str
    department: str
    description: str
    workspaces: list[str]
    permissions: list[str]
    scope: ScopeOut


def scope_out(scope: DataScope) -> ScopeOut:
    return ScopeOut(
        regions=scope.regions if isinstance(scope.regions, str) else sorted(scope.regions),
        segments=scope.segments if isinstance(scope.segments, str) else sorted(scope.segments),
        max_amount=scope.max_amount,
    )


# --- API keys --------------------------------------------------------------------------


class ApiKeyCreate(InputModel):
    name: str = Field(min_length=1, max_length=100, examples=["Looker nightly export"])
    expires_at: datetime = Field(description="at most one year ahead; UTC unless it says")
    permissions: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        min_length=1, max_length=50, examples=[["payments:view", "players:view"]]
    )
    owner: str | None = Field(
        default=None,
        max_length=64,
        description="whose key (a service user's); someone else's needs api_keys:manage",
    )


class ApiKeyOut(BaseModel):
    id: int
    name: str
    prefix: str
    owner: str
    created_by: str
    permissions: list[str]
    created_at: datetime
    expires_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    state: Literal["active", "expired", "revoked"]


class ApiKeyIssued(ApiKeyOut):
    key: str = Field(description="the secret: shown this once, store it now")

"""Inputs and outputs of the approval workflow and its activities (one dataclass each)."""

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from policies.snapshot import EVERY, ChainSnapshot, DataScope

APPROVAL_WORKFLOW_PREFIX = "approval-"

# Request statuses (the read model and the API use the same words).
PENDING = "pending"
APPROVED = "approved"
REJECTED = "rejected"
EXPIRED = "expired"
CANCELLED = "cancelled"
EXECUTED = "executed"
FAILED = "failed"
# Never recorded: the submission itself was refused (e.g. another request is open).
REFUSED = "refused"
TERMINAL_STATUSES = frozenset({REJECTED, EXPIRED, CANCELLED, EXECUTED, FAILED})


def approval_workflow_id(request_id: str) -> str:
    return f"{APPROVAL_WORKFLOW_PREFIX}{request_id}"


@dataclass(frozen=True)
class Origin:
    """Where a person's command came from; recorded on every audit event they cause."""

    channel: str = "api"
    ip: str | None = None
    device: str | None = None


@dataclass(frozen=True)
class ApprovalInput:
    request_id: str
    action: str
    target: str
    params: dict[str, str]
    reason: str
    requester: str
    requester_id: int
    chain: ChainSnapshot
    origin: Origin = field(default_factory=Origin)
    requester_team: str | None = None
    # The region and segment of the player the target belongs to, taken at submission;
    # None when it is no player's (and in requests started before they were recorded).
    region: str | None = None
    segment: str | None = None
    # Every decision must carry the decider's data scope (False only in requests started
    # before scopes were checked, whose histories must replay as they ran).
    decisions_carry_scopes: bool = False


@dataclass(frozen=True)
class ScopeInput:
    """A DataScope as plain values a workflow payload can carry: ["*"] reaches every
    region or segment; max_amount None is no limit."""

    regions: list[str]
    segments: list[str]
    max_amount: str | None = None

    @classmethod
    def of(cls, scope: DataScope) -> "ScopeInput":
        return cls(
            regions=[EVERY] if scope.regions == EVERY else sorted(scope.regions),
            segments=[EVERY] if scope.segments == EVERY else sorted(scope.segments),
            max_amount=None if scope.max_amount is None else str(scope.max_amount),
        )

    def data_scope(self) -> DataScope:
        return DataScope(
            regions=EVERY if EVERY in self.regions else frozenset(self.regions),
            segments=EVERY if EVERY in self.segments else frozenset(self.segments),
            max_amount=None if self.max_amount is None else Decimal(self.max_amount),
        )


@dataclass(frozen=True)
class DecisionInput:
    user: str
    user_id: int
    roles: list[str]
    decision: str  # "approve" or "reject"
    comment: str = ""
    origin: Origin = field(default_factory=Origin)
    team: str | None = None
    # Deciding for an absent approver under their delegation; `roles` are then theirs.
    on_behalf_of: str | None = None
    on_behalf_of_id: int | None = None
    delegation_ends_at: datetime | None = None
    # Each must cover the request: the decider's own data scope and, under a delegation,
    # the delegator's. Empty in decisions recorded before scopes were checked.
    scopes: list[ScopeInput] = field(default_factory=list)


@dataclass(frozen=True)
class CancelInput:
    user: str
    user_id: int
    reason: str = ""
    origin: Origin = field(default_factory=Origin)


@dataclass
class StepState:
    index: int
    name: str
    roles: list[str]
    required_approvals: int
    status: str = "waiting"  # waiting, open, approved, rejected, cancelled, expired
    approvers: list[str] = field(default_factory=list)
    due_at: datetime | None = None
    sla_breached: bool = False


@dataclass
class ApprovalState:
    request_id: str
    status: str
    current_step: int
    steps: list[StepState]
    outcome: str | None = None


@dataclass(frozen=True)
class Transition:
    """One recorded change of a request: an audit event plus its read-model update."""

    event_id: str
    request_id: str
    kind: str
    actor: str
    actor_type: str
    occurred_at: datetime
    origin: Origin = field(default_factory=Origin)
    step_index: int | None = None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TransitionBatch:
    """Transitions that happened together; recorded in one transaction, in order."""

    transitions: list[Transition]


@dataclass(frozen=True)
class ExecuteInput:
    request_id: str
    action: str
    target: str
    params: dict[str, str]


@dataclass(frozen=True)
class ExecuteResult:
    before: dict[str, Any]
    after: dict[str, Any]
    summary: str


@dataclass(frozen=True)
class CheckpointResult:
    checkpoint_id: int
    streams: int

"""Plain data handed from the policy engine into workflows (no I/O, no heavy imports)."""

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Literal

# A scope dimension that reaches every value ("*" in roles.yaml).
EVERY: Literal["*"] = "*"


@dataclass(frozen=True)
class StepSpec:
    name: str
    roles: list[str]
    approvals: int
    sla_seconds: int
    escalate_to: str | None = None
    outside_requester_team: bool = False


@dataclass(frozen=True)
class ChainSnapshot:
    """The chain an action needs, frozen when the request starts."""

    action: str
    policy_version: str
    tier: str
    steps: list[StepSpec]
    expires_after_seconds: int
    bulk_decisions: bool = False
    reverts_with: str | None = None


@dataclass(frozen=True)
class DataScope:
    """The data a person's roles reach: regions and player segments ("*" for all of them)
    and the largest money amount they may act on (None: no limit). The default reaches
    nothing."""

    regions: frozenset[str] | Literal["*"] = frozenset()
    segments: frozenset[str] | Literal["*"] = frozenset()
    max_amount: Decimal | None = Decimal(0)


@dataclass(frozen=True)
class Principal:
    user_id: int
    username: str
    roles: frozenset[str] = field(default_factory=frozenset)
    # The merged scope of the roles, when whoever built the principal worked it out;
    # None otherwise, and PolicyEngine.scope_of(principal) answers from the roles.
    scope: DataScope | None = None
    # Set when the caller is an API key: only these of the roles' permissions count, and
    # no "approve" verb ever does (deciding is a human act). None for a person.
    permission_filter: frozenset[str] | None = None
    # When the sign-in acting here last proved a second factor (None: never, or unknown).
    mfa_checked_at: datetime | None = None

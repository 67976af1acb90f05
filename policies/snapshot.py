"""Plain data handed from the policy engine into workflows (no I/O, no heavy imports)."""

from dataclasses import dataclass, field


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
class Principal:
    user_id: int
    username: str
    roles: frozenset[str] = field(default_factory=frozenset)

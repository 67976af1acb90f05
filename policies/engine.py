"""Load and validate the policy files; answer who may do what and which chain applies."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from policies.rules import ALLOW, Decision, deny, permission_matches
from policies.snapshot import EVERY, ChainSnapshot, DataScope, Principal, StepSpec

DEFAULT_DIR = Path(__file__).resolve().parent
_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


_M = TypeVar("_M", bound=BaseModel)
# Temporary changes last at most this long; longer ones are permanent changes.
MAX_REVERT_HORIZON = timedelta(days=366)
# The verbs of a catalogue action used as a permission resource.
CATALOGUE_VERBS = ("request", "approve")


class PolicyError(Exception):
    """A policy file is missing or invalid; the message names the file and the key."""


def parse_duration(value: str) -> int:
    match = _DURATION.match(value.strip())
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"'{value}' is not a duration like 90s, 30m, 4h or 3d")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScopeDef(_Strict):
    """The data a role reaches; the values are checked against the file's declared lists."""

    regions: list[str] | Literal["*"]
    segments: list[str] | Literal["*"]
    max_amount: Decimal | None = None

    @field_validator("regions", "segments", mode="before")
    @classmethod
    def _every_or_some(cls, value: object) -> object:
        if value == EVERY:
            return value
        if not isinstance(value, list) or not value:
            raise ValueError("must be '*' or a non-empty list")
        return value

    @field_validator("max_amount")
    @classmethod
    def _money(cls, value: Decimal | None) -> Decimal | None:
        if value is None:
            return None
        if not value.is_finite() or value <= 0:
            raise ValueError("must be an amount greater than zero (omit it for no limit)")
        if value.as_tuple().exponent < -2:  # type: ignore[operator]
            raise ValueError("has more than 2 decimal places")
        return value

    def data_scope(self) -> DataScope:
        return DataScope(
            regions=EVERY if self.regions == EVERY else frozenset(self.regions),
            segments=EVERY if self.segments == EVERY else frozenset(self.segments),
            max_amount=self.max_amount,
        )


class RateLimitDef(_Strict):
    """API requests a holder (and each of their API keys) may make: `per_hour` on
    average, and up to `burst` at once (the token bucket's size)."""

    per_hour: int = Field(ge=1, le=1_000_000)
    burst: int = Field(ge=1, le=100_000)


# Who has no role with a `rate_limit` gets this one.
DEFAULT_RATE_LIMIT = RateLimitDef(per_hour=1000, burst=300)


class RoleDef(_Strict):
    department: str
    description: str
    workspaces: list[str] = Field(default_factory=list)
    permissions: list[str] = Field(default_factory=list)
    scope: ScopeDef
    # Holders must sign in with an authenticator code (and set one up before anything else).
    mfa_required: bool = False
    rate_limit: RateLimitDef | None = None


class ResourceDef(_Strict):
    title: str
    verbs: list[str] = Field(min_length=1)


class RolesFile(_Strict):
    version: int
    workspaces: dict[str, str]
    departments: dict[str, str]
    regions: list[str] = Field(min_length=1)
    segments: list[str] = Field(min_length=1)
    resources: dict[str, ResourceDef]
    roles: dict[str, RoleDef]


class StepDef(_Strict):
    name: str
    roles: list[str] = Field(min_length=1)
    approvals: int = Field(default=1, ge=1)
    sla: str
    escalate_to: str | None = None
    # Separation of duties: nobody from the requester's team may decide this step.
    outside_requester_team: bool = False

    @field_validator("sla")
    @classmethod
    def _duration(cls, value: str) -> str:
        parse_duration(value)
        return value


class TierCondition(_Strict):
    param: str
    below: Decimal


class TierDef(_Strict):
    name: str
    when: TierCondition | None = None
    steps: list[StepDef] = Field(min_length=1)


ParamType = Literal[
    "money", "percent", "number", "integer", "odds", "choice", "datetime", "document"
]
# The longest JSON object a `document` param may carry (as canonical text).
MAX_DOCUMENT_CHARS = 20_000
# Bounds a parameter of each type has unless the chain narrows them.
_DEFAULT_BOUNDS: dict[str, tuple[Decimal, Decimal]] = {
    "money": (Decimal("0.01"), Decimal("100000000")),
    "percent": (Decimal("0"), Decimal("100")),
    "number": (Decimal("-1000000000"), Decimal("1000000000")),
    "integer": (Decimal("0"), Decimal("1000000000")),
    "odds": (Decimal("1.01"), Decimal("1000")),
}


class ParamDef(_Strict):
    type: ParamType
    label: str | None = None
    min: Decimal | None = None
    max: Decimal | None = None
    choices: list[str] | None = None
    required: bool = True

    @field_validator("choices")
    @classmethod
    def _choices(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("a choice needs at least one option")
        return value

    def bounds(self) -> tuple[Decimal, Decimal]:
        low, high = _DEFAULT_BOUNDS.get(self.type, (Decimal("0"), Decimal("0")))
        return (
            self.min if self.min is not None else low,
            self.max if self.max is not None else high,
        )


class ChainDef(_Strict):
    title: str
    department: str
    target: str  # what the target id names: payment, player, game, market, ...
    expires_after: str
    params: dict[str, ParamDef] = Field(default_factory=dict)
    # Values the server works out from the target (never taken from the requester),
    # e.g. change_percent for a rate change; tiers may test them like params.
    derived: list[str] = Field(default_factory=list)
    # Approvers may decide several requests of this action at once with one comment.
    bulk_decisions: bool = False
    # A param of type datetime after which the executed change is undone automatically.
    reverts_with: str | None = None
    # The page that asks for this action (it has a lifecycle of its own, e.g. JIT access);
    # the generic request form and POST /api/v1/requests refuse it.
    requested_from: str | None = None
    tiers: list[TierDef] = Field(min_length=1)

    @field_validator("expires_after")
    @classmethod
    def _duration(cls, value: str) -> str:
        parse_duration(value)
        return value


class ChainsFile(_Strict):
    version: str
    chains: dict[str, ChainDef]


def _load_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise PolicyError(f"{path}: file not found") from exc
    except yaml.YAMLError as exc:
        raise PolicyError(f"{path}: not valid YAML: {exc}") from exc


def _parse(path: Path, model: type[_M]) -> _M:
    try:
        return model.model_validate(_load_yaml(path))
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(part) for part in first["loc"]) or "(top level)"
        raise PolicyError(f"{path}: key '{key}': {first['msg']}") from exc


@dataclass(frozen=True)
class ParamError:
    field: str
    message: str


class PolicyEngine:
    def __init__(self, roles: RolesFile, chains: ChainsFile) -> None:
        self.defaults = roles
        self._roles = roles
        self.chains = chains
        # The counter of the overrides in force (0: the file as it is).
        self.overrides_version = 0
        self._watch_overrides: Callable[[PolicyEngine], None] | None = None

    @classmethod
    def load(cls, directory: Path = DEFAULT_DIR) -> PolicyEngine:
        roles_path = directory / "roles.yaml"
        chains_path = directory / "approval_chains.yaml"
        roles = _parse(roles_path, RolesFile)
        chains = _parse(chains_path, ChainsFile)
        _check_roles(roles_path, roles, set(chains.chains))
        for action, chain in chains.chains.items():
            if chain.reverts_with is not None and (
                chain.params.get(chain.reverts_with) is None
                or chain.params[chain.reverts_with].type != "datetime"
            ):
                raise PolicyError(
                    f"{chains_path}: key 'chains.{action}.reverts_with': "
                    f"'{chain.reverts_with}' is not a declared datetime param"
                )
            for name, param in chain.params.items():
                if (param.type == "choice") != (param.choices is not None):
                    raise PolicyError(
                        f"{chains_path}: key 'chains.{action}.params.{name}.choices': "
                        "a choice param needs choices, and only a choice param has them"
                    )
            for t, tier in enumerate(chain.tiers):
                if tier.when is not None and tier.when.param not in (
                    *chain.params,
                    *chain.derived,
                ):
                    raise PolicyError(
                        f"{chains_path}: key 'chains.{action}.tiers.{t}.when.param': "
                        f"'{tier.when.param}' is not a declared or derived param"
                    )
                for s, step in enumerate(tier.steps):
                    for role_name in [
                        *step.roles,
                        *([step.escalate_to] if step.escalate_to else []),
                    ]:
                        if role_name not in roles.roles:
                            raise PolicyError(
                                f"{chains_path}: key 'chains.{action}.tiers.{t}.steps.{s}': "
                                f"unknown role '{role_name}'"
                            )
            if chain.tiers[-1].when is not None:
                raise PolicyError(
                    f"{chains_path}: key 'chains.{action}.tiers': the last tier must have no "
                    "'when' so that every request finds a chain"
                )
        for key, problem in approver_problems(roles, chains):
            raise PolicyError(f"{chains_path}: key '{key}': {problem}")
        return cls(roles, chains)

    # --- role definitions changed in the app (versioned overrides of roles.yaml) -------

    @property
    def roles(self) -> RolesFile:
        """The roles in force: the file's, with the latest approved overrides in place."""
        if self._watch_overrides is not None:
            self._watch_overrides(self)
        return self._roles

    def watch_overrides(self, watch: Callable[[PolicyEngine], None]) -> None:
        """Call `watch` before each read of the roles; it may `apply_overrides` (it must be
        cheap when nothing changed)."""
        self._watch_overrides = watch

    def overridden(self, overrides: Mapping[str, RoleDef]) -> RolesFile:
        """The file's roles with these definitions in place of theirs, checked as at load;
        PolicyError names the first problem."""
        roles = self.defaults.model_copy(update={"roles": {**self.defaults.roles, **overrides}})
        for name in overrides:
            for key, problem in role_problems(roles, name, set(self.chains.chains)):
                raise PolicyError(f"key 'roles.{name}.{key}': {problem}")
        for key, problem in approver_problems(roles, self.chains):
            raise PolicyError(f"key '{key}': {problem}")
        return roles

    def apply_overrides(self, version: int, overrides: Mapping[str, RoleDef]) -> None:
        """Put these definitions in force (all at once) as overrides version `version`."""
        self._roles = self.overridden(overrides)
        self.overrides_version = version

    def with_overrides(self, overrides: Mapping[str, RoleDef]) -> PolicyEngine:
        """A separate engine, as this one would be with these definitions also in force."""
        current = {name: role for name, role in self.roles.roles.items()}
        engine = PolicyEngine(self.defaults, self.chains)
        engine._roles = engine.overridden({**current, **overrides})
        return engine

    # --- roles and permissions --------------------------------------------------------

    @property
    def role_names(self) -> list[str]:
        return list(self.roles.roles)

    def permissions_of(self, principal: Principal) -> set[str]:
        granted: set[str] = set()
        for role in principal.roles:
            definition = self.roles.roles.get(role)
            if definition is not None:
                granted.update(definition.permissions)
        return granted

    def authorize(self, principal: Principal, permission: str) -> Decision:
        if principal.permission_filter is not None:
            if permission.partition(":")[2] == "approve":
                return deny("api_key", "an API key cannot approve: deciding is a human act")
            if not any(permission_matches(k, permission) for k in principal.permission_filter):
                return deny("api_key", f"this API key does not carry '{permission}'")
        if any(permission_matches(g, permission) for g in self.permissions_of(principal)):
            return ALLOW
        return deny("forbidden", f"your roles do not grant '{permission}'")

    def permission_problem(self, permission: str) -> str | None:
        """What is wrong with a permission name, or None if the policy files know it."""
        return _permission_problem(permission, self.roles.resources, set(self.chains.chains))

    def rate_limit_of(self, principal: Principal) -> RateLimitDef:
        """The most generous limit of the principal's roles (a role without one has the
        default)."""
        limits = [
            self.roles.roles[role].rate_limit or DEFAULT_RATE_LIMIT
            for role in principal.roles
            if role in self.roles.roles
        ] or [DEFAULT_RATE_LIMIT]
        return max(limits, key=lambda limit: (limit.per_hour, limit.burst))

    def scope_of(self, principal: Principal) -> DataScope:
        """The data the principal's roles reach together (roles unknown to the file add none)."""
        return merge_scopes(
            self.roles.roles[role].scope.data_scope()
            for role in principal.roles
            if role in self.roles.roles
        )

    def workspaces_for(self, principal: Principal) -> list[tuple[str, str]]:
        allowed: set[str] = set()
        for role in principal.roles:
            definition = self.roles.roles.get(role)
            if definition is not None:
                allowed.update(definition.workspaces)
        return [(key, title) for key, title in self.roles.workspaces.items() if key in allowed]

    # --- approval chains --------------------------------------------------------------

    @property
    def actions(self) -> list[str]:
        return list(self.chains.chains)

    def chain_definition(self, action: str) -> ChainDef | None:
        return self.chains.chains.get(action)

    def may_request(self, principal: Principal, action: str) -> Decision:
        if action not in self.chains.chains:
            return deny("unknown_action", f"'{action}' is not an action of the catalogue")
        return self.authorize(principal, f"{action}:request")

    def may_request_generically(self, principal: Principal, action: str) -> Decision:
        """may_request, for the one request form and API: an action asked for from a page
        of its own is refused there."""
        verdict = self.may_request(principal, action)
        chain = self.chains.chains.get(action)
        if verdict and chain is not None and chain.requested_from:
            return deny("own_entry_point", f"'{action}' is asked for from {chain.requested_from}")
        return verdict

    def validate_params(
        self, action: str, params: dict[str, Any], now: datetime
    ) -> tuple[dict[str, str], list[ParamError]]:
        """Coerce params to their declared types, as canonical strings, or say what is wrong.

        Derived values are not accepted from the caller; the server works them out.
        """
        chain = self.chains.chains[action]
        clean: dict[str, str] = {}
        errors: list[ParamError] = []
        for key in params:
            if key not in chain.params:
                errors.append(ParamError(key, f"unknown parameter for {action}"))
        for key, spec in chain.params.items():
            raw = params.get(key)
            if raw is None or (isinstance(raw, str) and not raw.strip()):
                if spec.required:
                    errors.append(ParamError(key, "is required"))
                continue
            value, problem = _coerce(spec, raw, now)
            if problem is not None:
                errors.append(ParamError(key, problem))
            else:
                clean[key] = value
        return clean, errors

    def chain_for(self, action: str, params: dict[str, Any]) -> ChainSnapshot:
        chain = self.chains.chains[action]
        for tier in chain.tiers:
            if tier.when is None or _below(params.get(tier.when.param), tier.when.below):
                return ChainSnapshot(
                    action=action,
                    policy_version=self.chains.version,
                    tier=tier.name,
                    steps=[
                        StepSpec(
                            name=step.name,
                            roles=list(step.roles),
                            approvals=step.approvals,
                            sla_seconds=parse_duration(step.sla),
                            escalate_to=step.escalate_to,
                            outside_requester_team=step.outside_requester_team,
                        )
                        for step in tier.steps
                    ],
                    expires_after_seconds=parse_duration(chain.expires_after),
                    bulk_decisions=chain.bulk_decisions,
                    reverts_with=chain.reverts_with,
                )
        raise PolicyError(f"no tier of {action} matches")  # unreachable: load() checks


def _check_roles(path: Path, roles: RolesFile, actions: set[str]) -> None:
    """Every name a role uses must be declared: a typo stops start-up, naming the key."""
    for name in roles.roles:
        for key, problem in role_problems(roles, name, actions):
            raise PolicyError(f"{path}: key 'roles.{name}.{key}': {problem}")


def role_problems(roles: RolesFile, name: str, actions: set[str]) -> Iterator[tuple[str, str]]:
    """(key within the role, what is wrong) for each undeclared name role `name` uses."""
    role = roles.roles[name]
    if role.department not in roles.departments:
        yield "department", f"unknown department '{role.department}'"
    for index, workspace in enumerate(role.workspaces):
        if workspace not in roles.workspaces:
            yield f"workspaces.{index}", f"unknown workspace '{workspace}'"
    for index, permission in enumerate(role.permissions):
        problem = _permission_problem(permission, roles.resources, actions)
        if problem is not None:
            yield f"permissions.{index}", problem
    for dimension, declared in (
        ("regions", roles.regions),
        ("segments", roles.segments),
    ):
        values = getattr(role.scope, dimension)
        if values == EVERY:
            continue
        for index, value in enumerate(values):
            if value not in declared:
                yield (
                    f"scope.{dimension}.{index}",
                    f"unknown {dimension[:-1]} '{value}' (declared: {', '.join(declared)})",
                )


def approver_problems(roles: RolesFile, chains: ChainsFile) -> Iterator[tuple[str, str]]:
    """Each role named by a step must grant approving that action (a role change may not
    leave a step that nobody can decide)."""
    for action, chain in chains.chains.items():
        for t, tier in enumerate(chain.tiers):
            for s, step in enumerate(tier.steps):
                for role_name in step.roles:
                    granted = roles.roles[role_name].permissions
                    if not any(permission_matches(g, f"{action}:approve") for g in granted):
                        yield (
                            f"chains.{action}.tiers.{t}.steps.{s}",
                            f"role '{role_name}' does not grant '{action}:approve'",
                        )


def _permission_problem(
    permission: str, resources: dict[str, ResourceDef], actions: set[str]
) -> str | None:
    if permission == "*":
        return None
    resource, _, verb = permission.partition(":")
    if not resource or not verb:
        return f"'{permission}' is not '<resource>:<verb>'"
    if resource == "*":
        verbs = {v for r in resources.values() for v in r.verbs} | set(CATALOGUE_VERBS)
    elif resource in resources:
        verbs = set(resources[resource].verbs)
    elif resource in actions:
        verbs = set(CATALOGUE_VERBS)
    else:
        return (
            f"unknown resource '{resource}' in '{permission}': declare it under 'resources' "
            "or name an action of approval_chains.yaml"
        )
    if verb != "*" and verb not in verbs:
        return f"'{resource}' has no verb '{verb}' (it has: {', '.join(sorted(verbs))})"
    return None


def merge_scopes(scopes: Iterable[DataScope]) -> DataScope:
    """Regions and segments are united ("*" absorbs the rest); the highest limit wins
    (no limit absorbs every limit). No scopes at all reach nothing."""
    merged = DataScope()
    for scope in scopes:
        merged = DataScope(
            regions=_union(merged.regions, scope.regions),
            segments=_union(merged.segments, scope.segments),
            max_amount=(
                None
                if merged.max_amount is None or scope.max_amount is None
                else max(merged.max_amount, scope.max_amount)
            ),
        )
    return merged


def _union(
    left: frozenset[str] | Literal["*"], right: frozenset[str] | Literal["*"]
) -> frozenset[str] | Literal["*"]:
    if isinstance(left, str) or isinstance(right, str):
        return EVERY
    return left | right


def within_scope(
    scope: DataScope,
    region: str | None = None,
    segment: str | None = None,
    amount: Decimal | int | str | None = None,
) -> Decision:
    """May someone with this scope act on data of this region, segment and amount?
    A value not given is not checked."""
    if region is not None and not _reaches(scope.regions, region):
        return deny(
            "region_out_of_scope",
            f"region {region} is outside your scope ({_listed(scope.regions)})",
        )
    if segment is not None and not _reaches(scope.segments, segment):
        return deny(
            "segment_out_of_scope",
            f"player segment {segment} is outside your scope ({_listed(scope.segments)})",
        )
    if amount is not None and scope.max_amount is not None:
        value = Decimal(str(amount))
        if value > scope.max_amount:
            return deny(
                "over_limit", f"amount {value:.2f} is above your limit of {scope.max_amount:.2f}"
            )
    return ALLOW


def _reaches(values: frozenset[str] | Literal["*"], value: str) -> bool:
    return values == EVERY or value in values


def _listed(values: frozenset[str] | Literal["*"]) -> str:
    if isinstance(values, str):
        return "all"
    return ", ".join(sorted(values)) if values else "none"


def _below(value: object, limit: Decimal) -> bool:
    # A missing optional value takes the first (least demanding) tier.
    return value is None or Decimal(str(value)) < limit


def _coerce(spec: ParamDef, raw: object, now: datetime) -> tuple[str, str | None]:
    """(canonical string, None) or ("", what is wrong) for one param value."""
    if spec.type == "document":
        return _coerce_document(raw)
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        return "", "must be a number" if spec.type not in ("choice", "datetime") else "must be text"
    text = str(raw).strip()
    if spec.type == "choice":
        assert spec.choices is not None
        if text not in spec.choices:
            return "", f"must be one of: {', '.join(spec.choices)}"
        return text, None
    if spec.type == "datetime":
        return _coerce_datetime(text, now)
    try:
        value = Decimal(text)
    except InvalidOperation:
        return "", "must be a number"
    if not value.is_finite():
        return "", "must be a number"
    whole = spec.type == "integer"
    if whole and value != value.to_integral_value():
        return "", "must be a whole number"
    if not whole and value.as_tuple().exponent < -2:  # type: ignore[operator]
        return "", "has more than 2 decimal places"
    if spec.type == "money" and value <= 0:
        return "", "must be greater than zero"
    low, high = spec.bounds()
    if not low <= value <= high:
        return "", f"must be between {low} and {high}"
    return (f"{value:.0f}" if whole else f"{value:.2f}"), None


def _coerce_datetime(text: str, now: datetime) -> tuple[str, str | None]:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return "", "must be a date and time like 2026-12-31T18:00"
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if moment <= now:
        return "", "must be in the future"
    if moment - now > MAX_REVERT_HORIZON:
        return "", f"must be within {MAX_REVERT_HORIZON.days} days"
    return moment.astimezone(UTC).isoformat(), None


def _coerce_document(raw: object) -> tuple[str, str | None]:
    """A JSON object (or its text) as canonical JSON text."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return "", "must be a JSON object"
    if not isinstance(raw, dict):
        return "", "must be a JSON object"
    text = json.dumps(raw, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    if len(text) > MAX_DOCUMENT_CHARS:
        return "", f"must be at most {MAX_DOCUMENT_CHARS} characters as JSON"
    return text, None

"""Load and validate the policy files; answer who may do what and which chain applies."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from policies.rules import ALLOW, Decision, deny, permission_matches
from policies.snapshot import ChainSnapshot, Principal, StepSpec

DEFAULT_DIR = Path(__file__).resolve().parent
_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


_M = TypeVar("_M", bound=BaseModel)


class PolicyError(Exception):
    """A policy file is missing or invalid; the message names the file and the key."""


def parse_duration(value: str) -> int:
    match = _DURATION.match(value.strip())
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"'{value}' is not a duration like 90s, 30m, 4h or 3d")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RoleDef(_Strict):
    department: str
    description: str
    workspaces: list[str] = Field(default_factory=list)
    permissions: list[str] = Field(default_factory=list)


class RolesFile(_Strict):
    version: int
    workspaces: dict[str, str]
    roles: dict[str, RoleDef]


class StepDef(_Strict):
    name: str
    roles: list[str] = Field(min_length=1)
    approvals: int = Field(default=1, ge=1)
    sla: str
    escalate_to: str | None = None

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


class ParamDef(_Strict):
    type: Literal["money"]
    min: Decimal
    max: Decimal


class ChainDef(_Strict):
    title: str
    department: str
    expires_after: str
    params: dict[str, ParamDef] = Field(default_factory=dict)
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
        self.roles = roles
        self.chains = chains

    @classmethod
    def load(cls, directory: Path = DEFAULT_DIR) -> PolicyEngine:
        roles_path = directory / "roles.yaml"
        chains_path = directory / "approval_chains.yaml"
        roles = _parse(roles_path, RolesFile)
        chains = _parse(chains_path, ChainsFile)
        for name, role in roles.roles.items():
            for index, workspace in enumerate(role.workspaces):
                if workspace not in roles.workspaces:
                    raise PolicyError(
                        f"{roles_path}: key 'roles.{name}.workspaces.{index}': "
                        f"unknown workspace '{workspace}'"
                    )
        for action, chain in chains.chains.items():
            for t, tier in enumerate(chain.tiers):
                if tier.when is not None and tier.when.param not in chain.params:
                    raise PolicyError(
                        f"{chains_path}: key 'chains.{action}.tiers.{t}.when.param': "
                        f"'{tier.when.param}' is not a declared param"
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
        return cls(roles, chains)

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
        if any(permission_matches(g, permission) for g in self.permissions_of(principal)):
            return ALLOW
        return deny("forbidden", f"your roles do not grant '{permission}'")

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

    def validate_params(
        self, action: str, params: dict[str, Any]
    ) -> tuple[dict[str, Any], list[ParamError]]:
        """Coerce params to their declared types; money is returned as a 2-decimal string."""
        chain = self.chains.chains[action]
        clean: dict[str, Any] = {}
        errors: list[ParamError] = []
        for key in params:
            if key not in chain.params:
                errors.append(ParamError(key, f"unknown parameter for {action}"))
        for key, spec in chain.params.items():
            if key not in params or params[key] in (None, ""):
                errors.append(ParamError(key, "is required"))
                continue
            raw = params[key]
            if isinstance(raw, bool) or not isinstance(raw, int | float | str):
                errors.append(ParamError(key, "must be a number"))
                continue
            try:
                value = Decimal(str(raw).strip())
            except InvalidOperation:
                errors.append(ParamError(key, "must be a number"))
                continue
            if not value.is_finite():
                errors.append(ParamError(key, "must be a number"))
            elif value.as_tuple().exponent < -2:  # type: ignore[operator]
                errors.append(ParamError(key, "has more than 2 decimal places"))
            elif value <= 0:
                errors.append(ParamError(key, "must be greater than zero"))
            elif not spec.min <= value <= spec.max:
                errors.append(ParamError(key, f"must be between {spec.min} and {spec.max}"))
            else:
                clean[key] = f"{value:.2f}"
        return clean, errors

    def chain_for(self, action: str, params: dict[str, Any]) -> ChainSnapshot:
        chain = self.chains.chains[action]
        for tier in chain.tiers:
            if tier.when is None or Decimal(str(params[tier.when.param])) < tier.when.below:
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
                        )
                        for step in tier.steps
                    ],
                    expires_after_seconds=parse_duration(chain.expires_after),
                )
        raise PolicyError(f"no tier of {action} matches")  # unreachable: load() checks

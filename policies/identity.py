"""Which roles people from single sign-on and the directory get: policies/identity.yaml.

Pure: reads the file once, validates it against roles.yaml, and answers from memory.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, field_validator

from policies.engine import DEFAULT_DIR, PolicyError, RolesFile, _parse, _Strict

FILE_NAME = "identity.yaml"


class GroupDef(_Strict):
    roles: list[str] = Field(min_length=1)
    department: str | None = None
    team: str | None = Field(default=None, min_length=1, max_length=64)


class IdentityFile(_Strict):
    version: int
    groups: dict[str, GroupDef]

    @field_validator("groups")
    @classmethod
    def _named(cls, groups: dict[str, GroupDef]) -> dict[str, GroupDef]:
        if any(not name.strip() for name in groups):
            raise ValueError("a group name is empty")
        return groups


@dataclass(frozen=True)
class Assignment:
    """What a person's current groups give them; no roles means they may not sign in."""

    roles: frozenset[str]
    department: str | None
    team: str | None
    matched_groups: tuple[str, ...]


class IdentityMap:
    def __init__(self, mapping: IdentityFile, roles: RolesFile) -> None:
        self.mapping = mapping
        self._roles = roles

    @classmethod
    def load(cls, roles: RolesFile, directory: Path = DEFAULT_DIR) -> IdentityMap:
        """Read and check identity.yaml; a problem raises PolicyError naming file and key."""
        path = directory / FILE_NAME
        mapping = _parse(path, IdentityFile)
        for group, definition in mapping.groups.items():
            at = f"groups.{group}"
            for index, role in enumerate(definition.roles):
                if role not in roles.roles:
                    raise PolicyError(f"{path}: key '{at}.roles.{index}': unknown role '{role}'")
            if definition.department is not None and definition.department not in roles.departments:
                raise PolicyError(
                    f"{path}: key '{at}.department': unknown department '{definition.department}'"
                )
        return cls(mapping, roles)

    def assign(self, groups: Iterable[str]) -> Assignment:
        """The roles of every mapped group the person is in (unknown groups give nothing)."""
        member_of = set(groups)
        matched = [(name, g) for name, g in self.mapping.groups.items() if name in member_of]
        roles = frozenset(role for _, g in matched for role in g.roles)
        if not matched:
            return Assignment(frozenset(), None, None, ())
        first = matched[0][1]
        department = first.department or self._roles.roles[first.roles[0]].department
        return Assignment(roles, department, first.team, tuple(name for name, _ in matched))

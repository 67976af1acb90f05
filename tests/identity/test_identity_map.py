"""policies/identity.yaml: groups to roles, checked against roles.yaml at start-up."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from api.app import create_app
from core.runtime import Runtime
from policies.engine import DEFAULT_DIR, PolicyEngine, PolicyError
from policies.identity import IdentityMap


@pytest.fixture(scope="module")
def policy() -> PolicyEngine:
    return PolicyEngine.load()


def test_the_shipped_mapping_loads_and_every_role_exists(policy: PolicyEngine):
    mapping = IdentityMap.load(policy.roles)
    for group in mapping.mapping.groups.values():
        assert set(group.roles) <= set(policy.role_names)


def test_roles_of_all_mapped_groups_are_given_and_unknown_groups_give_nothing(
    policy: PolicyEngine,
):
    mapping = IdentityMap.load(policy.roles)
    both = mapping.assign(["everyone", "risk-analysts", "finance-managers"])
    assert both.roles == {"risk.analyst", "finance.manager"}
    # The first group in the file decides the department: finance-managers comes before.
    assert both.department == "finance"
    assert mapping.assign(["backoffice-admins"]).department == "admin"
    nothing = mapping.assign(["everyone", "canteen-committee"])
    assert nothing.roles == frozenset() and nothing.matched_groups == ()


def broken_copy(tmp_path: Path, text: str) -> Path:
    shutil.copy(DEFAULT_DIR / "roles.yaml", tmp_path / "roles.yaml")
    shutil.copy(DEFAULT_DIR / "approval_chains.yaml", tmp_path / "approval_chains.yaml")
    (tmp_path / "identity.yaml").write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        (
            "version: 1\ngroups:\n  g: {roles: [finance.manger]}\n",
            "groups.g.roles.0",
            "unknown role 'finance.manger'",
        ),
        (
            "version: 1\ngroups:\n  g: {roles: [finance.manager], department: fin}\n",
            "groups.g.department",
            "unknown department 'fin'",
        ),
        ("version: 1\ngroups:\n  g: {roles: []}\n", "groups.g.roles", "at least 1 item"),
        (
            "version: 1\ngroups:\n  g: {roles: [finance.manager], colour: red}\n",
            "groups.g.colour",
            "Extra inputs",
        ),
        ("version: 1\n", "groups", "Field required"),
    ],
)
def test_a_bad_mapping_names_the_file_and_the_key(
    policy: PolicyEngine, tmp_path: Path, text: str, key: str, problem: str
):
    directory = broken_copy(tmp_path, text)
    with pytest.raises(PolicyError) as refused:
        IdentityMap.load(policy.roles, directory)
    message = str(refused.value)
    assert message.startswith(f"{directory / 'identity.yaml'}: key '{key}'"), message
    assert problem in message


def test_a_missing_mapping_file_is_named(policy: PolicyEngine, tmp_path: Path):
    with pytest.raises(PolicyError, match=r"identity\.yaml: file not found"):
        IdentityMap.load(policy.roles, tmp_path)


async def test_the_web_app_does_not_start_with_a_bad_mapping(runtime: Runtime, tmp_path: Path):
    directory = broken_copy(tmp_path, "version: 1\ngroups:\n  g: {roles: [no.such]}\n")
    broken = dataclasses.replace(
        runtime, settings=runtime.settings.model_copy(update={"policies_dir": directory})
    )
    app = create_app(broken)
    with pytest.raises(PolicyError, match=r"key 'groups\.g\.roles\.0': unknown role 'no\.such'"):
        async with app.router.lifespan_context(app):
            pass


def test_the_worker_refuses_to_start_with_a_bad_identity_map(tmp_path):
    """Not only the web app: `backoffice worker` checks identity.yaml before connecting."""
    import shutil
    import subprocess
    import sys

    from policies.engine import DEFAULT_DIR

    directory = tmp_path / "policies"
    shutil.copytree(DEFAULT_DIR, directory)
    (directory / "identity.yaml").write_text(
        (DEFAULT_DIR / "identity.yaml").read_text().replace("roles: [", "roles: [no.such.role, ", 1)
    )
    finished = subprocess.run(
        [sys.executable, "-m", "core.cli", "worker"],
        env={
            "PATH": "/usr/bin:/bin",
            "POLICIES_DIR": str(directory),
            "BACKOFFICE_ENV": "dev",
            "TEMPORAL_ADDRESS": "127.0.0.1:1",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert finished.returncode != 0
    assert "identity.yaml" in finished.stderr and "no.such.role" in finished.stderr

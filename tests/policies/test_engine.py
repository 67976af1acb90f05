"""The policy engine: files validated at load, permissions, chain selection, rules."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from policies.engine import DEFAULT_DIR, PolicyEngine, PolicyError
from policies.rules import check_approval_decision, check_cancel, permission_matches
from policies.snapshot import Principal

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


@pytest.fixture
def engine() -> PolicyEngine:
    return PolicyEngine.load()


def person(*roles: str, name: str = "someone") -> Principal:
    return Principal(user_id=1, username=name, roles=frozenset(roles))


def broken_copy(tmp_path: Path, filename: str, change) -> Path:
    for name in ("roles.yaml", "approval_chains.yaml"):
        shutil.copy(DEFAULT_DIR / name, tmp_path / name)
    data = yaml.safe_load((tmp_path / filename).read_text())
    change(data)
    (tmp_path / filename).write_text(yaml.safe_dump(data))
    return tmp_path


def test_withdrawal_chain_picks_the_tier_by_amount(engine):
    small = engine.chain_for("payment.withdrawal", {"amount": "9999.99"})
    large = engine.chain_for("payment.withdrawal", {"amount": "10000.00"})
    assert [s.roles for s in small.steps] == [["finance.manager"]]
    assert [s.roles for s in large.steps] == [["finance.manager"], ["finance.director"]]
    assert small.policy_version == large.policy_version == engine.chains.version
    assert small.steps[0].sla_seconds == 4 * 3600


@pytest.mark.parametrize(
    ("amount", "message"),
    [
        ("-5", "greater than zero"),
        ("0", "greater than zero"),
        ("abc", "number"),
        ("NaN", "number"),
        ("1.001", "2 decimal"),
        (True, "number"),
        ([1], "number"),
        ("99999999999", "between"),
    ],
)
def test_bad_amounts_are_named(engine, amount, message):
    clean, errors = engine.validate_params("payment.withdrawal", {"amount": amount}, NOW)
    assert clean == {} and errors and errors[0].field == "amount" and message in errors[0].message


def test_good_amount_is_normalised(engine):
    clean, errors = engine.validate_params("payment.withdrawal", {"amount": 12.5}, NOW)
    assert (
        errors == []
        and clean == {"amount": "12.50"}
        and Decimal(clean["amount"]) == Decimal("12.5")
    )


def test_permissions_and_workspaces_follow_roles(engine):
    clerk, director = person("finance.clerk"), person("finance.director")
    assert engine.may_request(clerk, "payment.withdrawal")
    assert not engine.authorize(clerk, "payment.withdrawal:approve")
    assert (
        "payment.withdrawal:approve" in engine.authorize(clerk, "payment.withdrawal:approve").reason
    )
    assert engine.authorize(director, "payment.withdrawal:approve")
    assert [k for k, _ in engine.workspaces_for(clerk)] == ["finance"]
    assert [k for k, _ in engine.workspaces_for(director)] == ["finance", "compliance"]
    assert engine.may_request(clerk, "no.such.action").code == "unknown_action"
    admin = person("platform.admin")
    assert engine.authorize(admin, "payments:view") and not engine.authorize(
        admin, "payment.withdrawal:approve"
    )


def test_permission_wildcards():
    assert permission_matches("*", "anything:at_all")
    assert permission_matches("payments:*", "payments:view")
    assert permission_matches("*:view", "audit:view")
    assert not permission_matches("*:view", "audit:edit")
    assert not permission_matches("payments:view", "payments:edit")


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"status": "executed"}, "not_pending"),
        ({"user": "alice"}, "own_request"),
        ({"deciders": ["bob"]}, "already_decided"),
        ({"user_roles": ["finance.clerk"]}, "missing_role"),
    ],
)
def test_separation_of_duties(kwargs, code):
    base: dict[str, Any] = {
        "user": "bob",
        "user_roles": ["finance.manager"],
        "requester": "alice",
        "status": "pending",
        "step_name": "Manager",
        "step_roles": ["finance.manager"],
        "deciders": [],
    }
    assert check_approval_decision(**{**base}).allowed
    verdict = check_approval_decision(**{**base, **kwargs})
    assert not verdict and verdict.code == code


def test_only_the_requester_cancels_a_pending_request():
    assert check_cancel(user="alice", requester="alice", status="pending")
    assert check_cancel(user="bob", requester="alice", status="pending").code == "not_requester"
    assert check_cancel(user="alice", requester="alice", status="approved").code == "not_pending"


@pytest.mark.parametrize(
    ("filename", "change", "names"),
    [
        (
            "approval_chains.yaml",
            lambda d: d["chains"]["payment.withdrawal"]["tiers"][0]["steps"][0].update(
                roles=["finance.ghost"]
            ),
            "chains.payment.withdrawal.tiers.0.steps.0",
        ),
        (
            "approval_chains.yaml",
            lambda d: d["chains"]["payment.withdrawal"]["tiers"][0]["steps"][0].update(sla="soon"),
            "chains.payment.withdrawal.tiers.0.steps.0.sla",
        ),
        (
            "approval_chains.yaml",
            lambda d: d["chains"]["payment.withdrawal"].update(surprise=1),
            "chains.payment.withdrawal.surprise",
        ),
        (
            "approval_chains.yaml",
            lambda d: d["chains"]["payment.withdrawal"]["tiers"][-1].update(
                when={"param": "amount", "below": "5"}
            ),
            "chains.payment.withdrawal.tiers",
        ),
        (
            "roles.yaml",
            lambda d: d["roles"]["finance.clerk"].update(workspaces=["casino"]),
            "roles.finance.clerk.workspaces.0",
        ),
        (
            "roles.yaml",
            lambda d: d["roles"]["finance.clerk"].pop("department"),
            "roles.finance.clerk.department",
        ),
    ],
)
def test_bad_policy_file_names_the_file_and_the_key(tmp_path, filename, change, names):
    directory = broken_copy(tmp_path, filename, change)
    with pytest.raises(PolicyError) as info:
        PolicyEngine.load(directory)
    assert filename in str(info.value) and names in str(info.value)


def test_unparseable_yaml_names_the_file(tmp_path):
    directory = broken_copy(tmp_path, "roles.yaml", lambda d: None)
    (directory / "roles.yaml").write_text("roles: [unclosed")
    with pytest.raises(PolicyError, match=r"roles\.yaml: not valid YAML"):
        PolicyEngine.load(directory)


def test_bad_policy_stops_the_command_with_the_message(tmp_path, monkeypatch, capsys):
    from core import cli

    directory = broken_copy(
        tmp_path, "roles.yaml", lambda d: d["roles"]["finance.clerk"].pop("description")
    )
    monkeypatch.setenv("POLICIES_DIR", str(directory))
    monkeypatch.setenv("TEMPORAL_ADDRESS", "127.0.0.1:1")
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    monkeypatch.setenv("BACKOFFICE_ENV", "dev")
    with pytest.raises(SystemExit) as info:
        cli.main(["worker"])
    assert "roles.yaml" in str(info.value) and "roles.finance.clerk.description" in str(info.value)

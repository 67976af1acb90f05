"""The predefined roles: catalogue size, validation at load, data scope, demo coverage."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from core import platform_seed
from core.db import SessionFactory
from core.repositories import users as users_repo
from core.seed import DEMO_USERS, DemoUser
from policies.engine import PolicyEngine, PolicyError, merge_scopes, within_scope
from policies.snapshot import EVERY, DataScope, Principal
from tests.policies.test_engine import broken_copy

DEPARTMENTS = ("operations", "crm", "risk", "finance", "compliance", "trading")


@pytest.fixture(scope="module")
def policy() -> PolicyEngine:
    return PolicyEngine.load()


def person(*roles: str) -> Principal:
    return Principal(user_id=1, username="someone", roles=frozenset(roles))


def demo_principal(demo: DemoUser) -> Principal:
    return Principal(user_id=0, username=demo.username, roles=frozenset(demo.roles))


# --- the catalogue ------------------------------------------------------------------


def test_there_are_fifty_roles_spread_over_the_six_departments(policy):
    roles = policy.roles.roles
    assert len(roles) >= 50
    for department in DEPARTMENTS:
        holders = [name for name, role in roles.items() if role.department == department]
        assert len(holders) >= 5, department
    assert all(role.workspaces and role.permissions for role in roles.values())


def test_regions_and_segments_are_those_of_the_platform_data(policy):
    assert sorted(policy.roles.regions) == sorted(platform_seed.REGIONS)
    assert sorted(policy.roles.segments) == sorted(platform_seed.SEGMENTS)


@pytest.mark.parametrize(
    ("role", "permission"),
    [
        ("finance.manager", "commissions:view"),
        ("finance.manager", "reconciliation:view"),
        ("crm.affiliate_manager", "commissions:view"),
        ("operations.lead", "tasks:reassign"),
        ("trading.head", "tasks:reassign"),
        ("compliance.lead", "delegations:manage_all"),
        ("platform.admin", "delegations:manage_all"),
        ("compliance.officer", "roles:view"),
        ("platform.admin", "roles:view"),
        ("compliance.auditor", "requests:view_all"),
    ],
)
def test_pages_gated_on_view_permissions_open_for_the_fitting_roles(policy, role, permission):
    assert policy.authorize(person(role), permission)


@pytest.mark.parametrize(
    ("role", "permission"),
    [
        ("finance.clerk", "audit:view"),
        ("finance.clerk", "tasks:reassign"),
        ("trading.trader", "roles:view"),
        ("compliance.auditor", "payment.withdrawal:approve"),
        ("operations.agent", "delegations:manage_all"),
    ],
)
def test_front_line_and_read_only_roles_do_not_get_more(policy, role, permission):
    assert not policy.authorize(person(role), permission)


# --- validation at load ---------------------------------------------------------------


def _role(data: dict[str, Any], name: str = "finance.clerk") -> dict[str, Any]:
    role: dict[str, Any] = data["roles"][name]
    return role


@pytest.mark.parametrize(
    ("change", "key", "says"),
    [
        (
            lambda d: _role(d)["scope"].update(regions=["UK", "FR"]),
            "roles.finance.clerk.scope.regions.1",
            "unknown region 'FR'",
        ),
        (
            lambda d: _role(d)["scope"].update(segments=["whale"]),
            "roles.finance.clerk.scope.segments.0",
            "unknown segment 'whale'",
        ),
        (
            lambda d: _role(d)["scope"].update(regions=[]),
            "roles.finance.clerk.scope.regions",
            "non-empty list",
        ),
        (
            lambda d: _role(d)["permissions"].append("payemnts:view"),
            "roles.finance.clerk.permissions.3",
            "unknown resource 'payemnts'",
        ),
        (
            lambda d: _role(d)["permissions"].append("payment.withdrawl:request"),
            "roles.finance.clerk.permissions.3",
            "unknown resource 'payment.withdrawl'",
        ),
        (
            lambda d: _role(d)["permissions"].append("payments:approve"),
            "roles.finance.clerk.permissions.3",
            "no verb 'approve'",
        ),
        (
            lambda d: _role(d)["permissions"].append("payment.withdrawal:edit"),
            "roles.finance.clerk.permissions.3",
            "no verb 'edit'",
        ),
        (
            lambda d: _role(d)["permissions"].append("payments"),
            "roles.finance.clerk.permissions.3",
            "'<resource>:<verb>'",
        ),
        (
            lambda d: _role(d).update(workspaces=["finance", "casino"]),
            "roles.finance.clerk.workspaces.1",
            "unknown workspace 'casino'",
        ),
        (
            lambda d: _role(d).update(department="marketing"),
            "roles.finance.clerk.department",
            "unknown department 'marketing'",
        ),
        (
            lambda d: _role(d)["scope"].update(max_amount="-100"),
            "roles.finance.clerk.scope.max_amount",
            "greater than zero",
        ),
        (
            lambda d: _role(d)["scope"].update(max_amount="0"),
            "roles.finance.clerk.scope.max_amount",
            "greater than zero",
        ),
        (
            lambda d: _role(d)["scope"].update(max_amount="10.005"),
            "roles.finance.clerk.scope.max_amount",
            "2 decimal places",
        ),
        (
            lambda d: _role(d)["scope"].update(max_amount="lots"),
            "roles.finance.clerk.scope.max_amount",
            "decimal",
        ),
        (
            lambda d: _role(d).pop("scope"),
            "roles.finance.clerk.scope",
            "required",
        ),
    ],
)
def test_a_bad_roles_file_stops_the_load_naming_file_and_key(tmp_path, change, key, says):
    directory = broken_copy(tmp_path, "roles.yaml", change)
    with pytest.raises(PolicyError) as info:
        PolicyEngine.load(directory)
    message = str(info.value)
    assert "roles.yaml" in message and f"'{key}'" in message and says in message, message


def test_wildcards_and_catalogue_verbs_are_accepted(tmp_path):
    def widen(data: dict[str, Any]) -> None:
        _role(data)["permissions"] += ["payments:*", "*:request", "player.close:*"]
        del _role(data)["scope"]["max_amount"]

    widened = PolicyEngine.load(broken_copy(tmp_path, "roles.yaml", widen))
    assert widened.authorize(person("finance.clerk"), "player.suspend:request")
    assert widened.scope_of(person("finance.clerk")).max_amount is None


# --- data scope -----------------------------------------------------------------------


def test_scopes_of_a_persons_roles_merge(policy):
    hosts = policy.scope_of(person("crm.vip_host_uk", "crm.vip_host_de"))
    assert hosts == DataScope(
        regions=frozenset({"UK", "IE", "DE"}),
        segments=frozenset({"high_value", "regular"}),
        max_amount=Decimal("25000"),
    )
    # "*" absorbs a list; the highest limit wins.
    clerk_and_vip = policy.scope_of(person("finance.payments_clerk_uk", "finance.vip_payments"))
    assert clerk_and_vip == DataScope(EVERY, EVERY, Decimal("250000"))
    # No limit absorbs every limit; roles the file does not know add nothing.
    assert (
        policy.scope_of(person("finance.payments_clerk_uk", "finance.director")).max_amount is None
    )
    assert policy.scope_of(person("crm.vip_host_de", "retired.role")).regions == frozenset({"DE"})
    assert policy.scope_of(person()) == DataScope(frozenset(), frozenset(), Decimal(0))


def test_merge_is_order_free_and_keeps_every_value():
    north = DataScope(frozenset({"SE"}), frozenset({"new"}), Decimal("100"))
    south = DataScope(frozenset({"ES", "MT"}), frozenset({"casual"}), Decimal("900.50"))
    merged = merge_scopes([north, south])
    assert merged == merge_scopes([south, north])
    assert merged == DataScope(
        frozenset({"SE", "ES", "MT"}), frozenset({"new", "casual"}), Decimal("900.50")
    )
    assert merge_scopes([]) == DataScope()


UK_CLERK = DataScope(frozenset({"UK", "IE"}), EVERY, Decimal("25000"))
VIP_ONLY = DataScope(EVERY, frozenset({"high_value"}), None)


@pytest.mark.parametrize(
    ("scope", "check", "code", "says"),
    [
        (UK_CLERK, {"region": "UK", "segment": "new", "amount": "25000.00"}, "allowed", ""),
        (
            UK_CLERK,
            {"region": "DE"},
            "region_out_of_scope",
            "region DE is outside your scope (IE, UK)",
        ),
        (UK_CLERK, {"amount": Decimal("25000.01")}, "over_limit", "above your limit of 25000.00"),
        (UK_CLERK, {"amount": 30000, "region": "IE"}, "over_limit", "30000.00"),
        (VIP_ONLY, {"segment": "casual"}, "segment_out_of_scope", "segment casual"),
        (VIP_ONLY, {"region": "CA", "segment": "high_value", "amount": 10**9}, "allowed", ""),
        (DataScope(), {"region": "UK"}, "region_out_of_scope", "(none)"),
        (DataScope(), {}, "allowed", ""),
    ],
)
def test_within_scope_decides_and_says_why(scope, check, code, says):
    decision = within_scope(scope, **check)
    assert decision.code == code and bool(decision) is (code == "allowed")
    assert says in decision.reason


def test_principal_keeps_its_three_argument_constructor():
    principal = Principal(7, "legacy", frozenset({"finance.clerk"}))
    assert principal.scope is None


def test_principal_for_carries_the_merged_scope(policy, sessions: SessionFactory):
    with sessions() as session:
        user = users_repo.by_username(session, "fin.clerk_uk")
        assert user is not None
        assert users_repo.principal_for(session, user).scope is None
        principal = users_repo.principal_for(session, user, policy)
    assert principal.roles == frozenset({"finance.payments_clerk_uk"})
    assert principal.scope == DataScope(frozenset({"UK", "IE"}), EVERY, Decimal("25000"))


# --- demo users -----------------------------------------------------------------------


def test_demo_users_hold_known_roles_and_cover_every_workspace(policy):
    reached: set[str] = set()
    for demo in DEMO_USERS:
        assert set(demo.roles) <= set(policy.roles.roles), demo.username
        reached.update(key for key, _ in policy.workspaces_for(demo_principal(demo)))
    assert reached == set(policy.roles.workspaces)


@pytest.mark.parametrize("action", PolicyEngine.load().actions)
def test_every_catalogue_action_has_a_demo_requester_and_its_approvers(policy, action):
    requesters = [d for d in DEMO_USERS if policy.may_request(demo_principal(d), action)]
    assert requesters, f"no demo user may request {action}"

    def chain_can_finish(requester: DemoUser) -> bool:
        for tier in policy.chains.chains[action].tiers:
            for step in tier.steps:
                approvers = [
                    d
                    for d in DEMO_USERS
                    if d is not requester
                    and set(d.roles) & set(step.roles)
                    and policy.authorize(demo_principal(d), f"{action}:approve")
                    and not (step.outside_requester_team and d.team == requester.team)
                ]
                if len(approvers) < step.approvals:
                    return False
        return True

    assert any(chain_can_finish(r) for r in requesters), action


async def test_me_shows_each_demo_users_workspaces_and_scope(api, tokens, policy):
    reached: set[str] = set()
    for demo in DEMO_USERS:
        response = await api.get("/api/v1/me", headers=await tokens.headers(demo.username))
        assert response.status_code == 200, response.text
        me = response.json()
        assert me["roles"] == sorted(demo.roles)
        reached.update(me["workspaces"])
        scope = policy.scope_of(demo_principal(demo))
        expected_regions = scope.regions if scope.regions == EVERY else sorted(scope.regions)
        assert me["scope"]["regions"] == expected_regions, demo.username
    assert reached == set(policy.roles.workspaces)

    clerk = (await api.get("/api/v1/me", headers=await tokens.headers("fin.clerk_uk"))).json()
    assert clerk["scope"] == {"regions": ["IE", "UK"], "segments": "*", "max_amount": "25000"}
    director = (await api.get("/api/v1/me", headers=await tokens.headers("fin.director"))).json()
    assert director["scope"] == {"regions": "*", "segments": "*", "max_amount": None}


# --- GET /api/v1/roles ----------------------------------------------------------------


async def test_roles_catalogue_needs_the_roles_view_permission(api, tokens):
    assert (await api.get("/api/v1/roles")).status_code == 401
    for username in ("fin.clerk", "trading.trader", "crm.vip"):
        refused = await api.get("/api/v1/roles", headers=await tokens.headers(username))
        assert refused.status_code == 403, refused.text
        assert "roles:view" in refused.json()["detail"]


async def test_roles_catalogue_lists_every_role_with_its_scope(api, tokens, policy):
    for username in ("comp.officer", "comp.lead", "comp.auditor", "admin"):
        listed = await api.get("/api/v1/roles", headers=await tokens.headers(username))
        assert listed.status_code == 200, listed.text
    body = listed.json()
    assert body["next"] is None
    names = [item["name"] for item in body["items"]]
    assert names == sorted(policy.roles.roles) and len(names) >= 50
    clerk = next(item for item in body["items"] if item["name"] == "finance.payments_clerk_de")
    assert clerk == {
        "name": "finance.payments_clerk_de",
        "department": "finance",
        "description": "Payments clerk for the German market",
        "workspaces": ["finance"],
        "permissions": ["payments:view", "players:view", "payment.withdrawal:request"],
        "scope": {"regions": ["DE"], "segments": "*", "max_amount": "25000"},
    }


async def test_roles_catalogue_filters_by_department(api, tokens):
    headers = await tokens.headers("comp.officer")
    trading = (await api.get("/api/v1/roles?department=trading", headers=headers)).json()
    assert trading["items"] and {i["department"] for i in trading["items"]} == {"trading"}
    unknown = await api.get("/api/v1/roles?department=marketing", headers=headers)
    assert unknown.status_code == 422
    assert "unknown department 'marketing'" in unknown.json()["detail"]

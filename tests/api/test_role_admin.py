"""Role administration through the API, on the real worker and database: the what-if names
whose access and which pending requests' approvers a change would touch; a proposal runs
the system-change chain and, approved, is in force at once with its before and after
audited; a rejected or bad proposal changes nothing.

Tests that activate a version put the roles back as policies/roles.yaml has them after.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import delete, func, select

from core.db import SessionFactory, transaction
from core.models import ApprovalRequest, AuditEvent, Payment, Player, RoleVersion
from core.repositories.role_versions import OverridesWatcher
from core.runtime import Runtime
from tests.conftest import Tokens

ADMIN_ROLES = "/api/v1/admin/roles"


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "timed out waiting"
        await asyncio.sleep(0.2)


@pytest.fixture
def roles_as_in_the_file(runtime: Runtime, sessions: SessionFactory) -> Iterator[None]:
    """After the test, the versions it activated are gone and the policy is the file's."""
    with sessions() as session:
        before = session.execute(select(func.coalesce(func.max(RoleVersion.id), 0))).scalar_one()
    yield
    with transaction(sessions) as session:
        session.execute(delete(RoleVersion).where(RoleVersion.id > before))
    OverridesWatcher(sessions).reload(runtime.policy, force=True)


@pytest.fixture
def approvers(make_user) -> dict[str, str]:
    return {
        "admin": make_user(("platform.admin",), "platform", "admin"),
        "officer": make_user(("compliance.officer",), "compliance", "compliance"),
        "lead": make_user(("compliance.lead",), "compliance", "compliance"),
    }


async def post(api: httpx.AsyncClient, tokens: Tokens, who: str, url: str, body: Any):
    return await api.post(url, json=body, headers=await tokens.headers(who))


async def decide(
    api: httpx.AsyncClient, tokens: Tokens, who: str, request_id: str, decision: str
) -> dict:
    response = await post(
        api,
        tokens,
        who,
        f"/api/v1/requests/{request_id}/decision",
        {"decision": decision, "comment": "reviewed"},
    )
    assert response.status_code == 200, response.text
    return response.json()


async def request_status(api: httpx.AsyncClient, tokens: Tokens, who: str, request_id: str):
    response = await api.get(f"/api/v1/requests/{request_id}", headers=await tokens.headers(who))
    assert response.status_code == 200, response.text
    return response.json()["status"]


async def workspaces_of(api: httpx.AsyncClient, tokens: Tokens, who: str) -> list[str]:
    response = await api.get("/api/v1/me", headers=await tokens.headers(who))
    assert response.status_code == 200, response.text
    return list(response.json()["workspaces"])


def role_versions(sessions: SessionFactory, role: str) -> int:
    with sessions() as session:
        return int(
            session.execute(
                select(func.count()).select_from(RoleVersion).where(RoleVersion.role == role)
            ).scalar_one()
        )


# --- what-if -------------------------------------------------------------------------


async def test_what_if_names_exactly_the_people_whose_access_changes(api, tokens, make_user):
    role = "trading.trader_esports"
    changed = make_user((role,), "trading-desk", "trading")
    # Another role of theirs grants all that the change adds or removes.
    covered = make_user((role, "risk.analyst", "trading.trader"), "trading-desk", "trading")
    make_user(("trading.trader",), "trading-desk", "trading")
    admin = make_user(("platform.admin",), "platform", "admin")

    response = await post(
        api,
        tokens,
        admin,
        f"{ADMIN_ROLES}/{role}/what-if",
        {
            "workspaces": ["trading", "risk"],
            "permissions": ["markets:view", "market.odds_adjustment:request", "cases:view"],
        },
    )

    assert response.status_code == 200, response.text
    result = response.json()
    assert [u["username"] for u in result["users"]] == [changed]
    (change,) = result["users"]
    assert change["workspaces_gained"] == ["risk"]
    assert change["permissions_gained"] == ["cases:view"]
    assert change["permissions_lost"] == ["market.status:request"]
    assert change["scope_before"] == change["scope_after"]
    assert covered not in {u["username"] for u in result["users"]}
    # Nothing was written: the role is as the file has it.
    role_now = await api.get(f"{ADMIN_ROLES}/{role}", headers=await tokens.headers(admin))
    assert role_now.json()["version"] == 0
    assert role_now.json()["definition"]["workspaces"] == ["trading"]


async def test_what_if_names_pending_requests_whose_approvers_change(
    api, tokens, make_user, new_withdrawal, sessions
):
    manager = make_user(("finance.manager",), "fin-treasury", "finance")
    director_too = make_user(("finance.manager", "finance.director"), "fin-mgmt", "finance")
    admin = make_user(("platform.admin",), "platform", "admin")
    uk_payment, de_payment = new_withdrawal("2500.00"), new_withdrawal("2600.00")
    with transaction(sessions) as session:
        payment = session.get(Payment, de_payment)
        assert payment is not None
        player = session.get(Player, payment.player_id)
        assert player is not None
        player.region = "DE"
    ids = {}
    for payment_id in (uk_payment, de_payment):
        created = await post(
            api,
            tokens,
            "fin.clerk",
            "/api/v1/requests",
            {"action": "payment.withdrawal", "target": payment_id, "params": {}, "reason": "p"},
        )
        assert created.status_code == 201, created.text
        ids[payment_id] = created.json()["id"]

    try:
        response = await post(
            api,
            tokens,
            admin,
            f"{ADMIN_ROLES}/finance.manager/what-if",
            {"scope": {"regions": ["DE"], "segments": "*", "max_amount": "500000"}},
        )
        assert response.status_code == 200, response.text
        result = response.json()
        listed = {r["request_id"]: r for r in result["requests"]}
        uk = listed[ids[uk_payment]]
        assert uk["step"] == "Finance manager approval"
        assert manager in uk["approvers_before"] and manager not in uk["approvers_after"]
        # Directors reach every region on their own: they can still decide.
        assert director_too in uk["approvers_before"] and director_too in uk["approvers_after"]
        assert ids[de_payment] not in listed  # DE stays in the manager's scope
        people = {u["username"]: u for u in result["users"]}
        assert people[manager]["scope_after"]["regions"] == ["DE"]
        assert director_too not in people
    finally:
        for request_id in ids.values():
            await post(
                api, tokens, "fin.clerk", f"/api/v1/requests/{request_id}/cancel", {"reason": "x"}
            )


# --- propose, approve, in force ----------------------------------------------------------


async def test_approved_change_is_in_force_and_audited(
    api, tokens, make_user, approvers, sessions, roles_as_in_the_file
):
    role = "crm.vip_host_nordics"
    holder = make_user((role,), "crm-vip", "crm")
    assert await workspaces_of(api, tokens, holder) == ["crm"]

    proposed = await post(
        api,
        tokens,
        approvers["admin"],
        f"{ADMIN_ROLES}/{role}/proposals",
        {"workspaces": ["crm", "risk"], "reason": "hosts review fraud cases"},
    )

    assert proposed.status_code == 201, proposed.text
    body = proposed.json()
    request_id = body["request"]["id"]
    assert body["request"]["action"] == "policy.role_change"
    assert body["request"]["status"] == "pending"
    assert [u["username"] for u in body["what_if"]["users"]] == [holder]
    # Pending: nothing in force yet.
    assert await workspaces_of(api, tokens, holder) == ["crm"]
    listed = await api.get(ADMIN_ROLES, headers=await tokens.headers(approvers["admin"]))
    row = next(r for r in listed.json()["items"] if r["name"] == role)
    assert row["pending_request_id"] == request_id and row["version"] == 0

    await decide(api, tokens, approvers["officer"], request_id, "approve")
    await decide(api, tokens, approvers["lead"], request_id, "approve")

    async def executed() -> bool:
        return await request_status(api, tokens, approvers["admin"], request_id) == "executed"

    await eventually(executed)

    async def gained() -> bool:
        return await workspaces_of(api, tokens, holder) == ["crm", "risk"]

    await eventually(gained)
    history = await api.get(
        f"{ADMIN_ROLES}/{role}/history", headers=await tokens.headers(approvers["admin"])
    )
    (version,) = history.json()["items"]
    assert version["version"] == 1
    assert version["proposed_by"] == approvers["admin"]
    assert version["request_id"] == request_id
    assert version["definition"]["workspaces"] == ["crm", "risk"]
    with sessions() as session:
        event = session.execute(
            select(AuditEvent).where(
                AuditEvent.stream == f"role:{role}", AuditEvent.action == "role.changed"
            )
        ).scalar_one()
    assert event.before["definition"]["workspaces"] == ["crm"]
    assert event.after["definition"]["workspaces"] == ["crm", "risk"]
    assert event.after["request_id"] == request_id


async def test_rejected_change_changes_nothing(
    api, tokens, make_user, approvers, sessions, roles_as_in_the_file
):
    role = "compliance.regulatory_mt"
    holder = make_user((role,), "compliance", "compliance")
    before = await workspaces_of(api, tokens, holder)
    proposed = await post(
        api,
        tokens,
        approvers["admin"],
        f"{ADMIN_ROLES}/{role}/proposals",
        {"workspaces": [*before, "trading"], "reason": "try"},
    )
    assert proposed.status_code == 201, proposed.text
    request_id = proposed.json()["request"]["id"]

    await decide(api, tokens, approvers["officer"], request_id, "reject")

    assert await request_status(api, tokens, approvers["admin"], request_id) == "rejected"
    assert await workspaces_of(api, tokens, holder) == before
    assert role_versions(sessions, role) == 0


async def test_a_second_proposal_waits_for_the_open_one(
    api, tokens, approvers, roles_as_in_the_file
):
    role = "finance.payments_clerk_ca"
    url = f"{ADMIN_ROLES}/{role}/proposals"
    body = {"permissions": ["payments:view"], "reason": "narrower"}
    first = await post(api, tokens, approvers["admin"], url, body)
    assert first.status_code == 201, first.text
    second = await post(api, tokens, approvers["admin"], url, body)
    assert second.status_code == 409, second.text
    assert first.json()["request"]["id"] in second.json()["detail"]
    await post(
        api,
        tokens,
        approvers["admin"],
        f"/api/v1/requests/{first.json()['request']['id']}/cancel",
        {"reason": "test done"},
    )


# --- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "body", "status", "field"),
    [
        ("crm.analyst", {"permissions": ["players:fly"]}, 422, "permissions.0"),
        ("crm.analyst", {"permissions": ["nothing:view"]}, 422, "permissions.0"),
        ("crm.analyst", {"workspaces": ["casino"]}, 422, "workspaces.0"),
        ("crm.analyst", {"scope": {"regions": ["XX"], "segments": "*"}}, 422, "scope.regions.0"),
        ("crm.analyst", {"scope": {"regions": [], "segments": "*"}}, 422, "scope.regions"),
        (
            "crm.analyst",
            {"scope": {"regions": "*", "segments": "*", "max_amount": "-5"}},
            422,
            "scope.max_amount",
        ),
        ("crm.analyst", {"scope": {"regions": "*"}}, 422, "scope.segments"),
        ("no.such_role", {"workspaces": ["crm"]}, 404, "role"),
        # Removing approval from a chain step's role would leave the step undecidable.
        (
            "compliance.lead",
            {"permissions": ["audit:view", "roles:view"]},
            422,
            "permissions",
        ),
    ],
)
async def test_bad_proposals_name_the_field_and_write_nothing(
    api, tokens, approvers, sessions, role, body, status, field
):
    for endpoint, extra in (("what-if", {}), ("proposals", {"reason": "because"})):
        with sessions() as session:
            requests_before = session.execute(
                select(func.count()).select_from(ApprovalRequest)
            ).scalar_one()
        response = await post(
            api, tokens, approvers["admin"], f"{ADMIN_ROLES}/{role}/{endpoint}", {**body, **extra}
        )
        assert response.status_code == status, response.text
        assert field in response.json()["fields"], response.text
        with sessions() as session:
            requests_after = session.execute(
                select(func.count()).select_from(ApprovalRequest)
            ).scalar_one()
        assert requests_after == requests_before
        assert role_versions(sessions, role) == 0


async def test_unchanged_and_unexplained_proposals_are_refused(api, tokens, approvers):
    url = f"{ADMIN_ROLES}/crm.analyst/proposals"
    current = (
        await api.get(f"{ADMIN_ROLES}/crm.analyst", headers=await tokens.headers("admin"))
    ).json()["definition"]
    same = await post(
        api,
        tokens,
        approvers["admin"],
        url,
        {"workspaces": current["workspaces"], "reason": "no-op"},
    )
    assert same.status_code == 422 and "changes nothing" in same.json()["detail"]
    blank = await post(
        api, tokens, approvers["admin"], url, {"workspaces": ["crm", "risk"], "reason": " "}
    )
    assert blank.status_code == 422 and "reason" in blank.json()["fields"]
    unknown_key = await post(
        api, tokens, approvers["admin"], url, {"department": "risk", "reason": "x"}
    )
    assert unknown_key.status_code == 422


async def test_only_role_editors_may_see_what_if_or_propose(api, tokens, approvers):
    change = {"workspaces": ["crm", "risk"]}
    for who in ("comp.lead", "fin.clerk", approvers["officer"]):
        for endpoint, body in (("what-if", change), ("proposals", {**change, "reason": "x"})):
            response = await post(api, tokens, who, f"{ADMIN_ROLES}/crm.analyst/{endpoint}", body)
            assert response.status_code == 403, response.text
            assert "roles:edit" in response.json()["detail"]
    # Reading needs roles:view, which compliance has and a clerk has not.
    assert (
        await api.get(ADMIN_ROLES, headers=await tokens.headers("comp.lead"))
    ).status_code == 200
    assert (
        await api.get(ADMIN_ROLES, headers=await tokens.headers("fin.clerk"))
    ).status_code == 403


async def test_the_generic_request_form_refuses_role_changes(api, tokens):
    response = await post(
        api,
        tokens,
        "admin",
        "/api/v1/requests",
        {
            "action": "policy.role_change",
            "target": "crm.analyst",
            "params": {"definition": {"workspaces": ["crm"]}},
            "reason": "around the what-if",
        },
    )
    assert response.status_code == 422, response.text
    assert "Role administration" in response.json()["detail"]


async def test_no_change_may_leave_nobody_able_to_propose_role_changes(api, tokens, approvers):
    current = (
        await api.get(f"{ADMIN_ROLES}/platform.admin", headers=await tokens.headers("admin"))
    ).json()["definition"]
    without_edit = [p for p in current["permissions"] if p != "roles:edit"]
    response = await post(
        api,
        tokens,
        approvers["admin"],
        f"{ADMIN_ROLES}/platform.admin/proposals",
        {"permissions": without_edit, "reason": "tidy"},
    )
    assert response.status_code == 422, response.text
    assert "roles:edit" in response.json()["fields"]["permissions"]

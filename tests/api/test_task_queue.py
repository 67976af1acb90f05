"""The task queue through the HTTP API: my queue and my team's, filters, claim and release,
bulk decisions; on real PostgreSQL and Temporal.

The test database is shared by the whole run, so every assertion about a queue looks only
at the requests the test itself created.
"""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from core.db import SessionFactory, transaction
from core.models import AuditEvent, Decision, Player, Task
from core.repositories import users as users_repo
from core.security import hash_password
from tests.conftest import Tokens

WITHDRAWAL = "payment.withdrawal"


# --- helpers --------------------------------------------------------------------------


def new_player(sessions: SessionFactory) -> str:
    suffix = secrets.token_hex(5).upper()
    with transaction(sessions) as session:
        session.add(
            Player(
                id=f"PLR-Q{suffix}",
                username=f"queue-{suffix}",
                region="UK",
                segment="regular",
                vip_tier="none",
                status="active",
            )
        )
    return f"PLR-Q{suffix}"


def new_user(sessions: SessionFactory, role: str, team: str | None) -> str:
    name = f"queue.{secrets.token_hex(4)}"
    with transaction(sessions) as session:
        users_repo.create(
            session,
            username=name,
            display_name=f"Queue {name}",
            department=role.split(".")[0],
            password_hash=hash_password("backoffice"),
            roles=[role],
            team=team,
        )
    return name


async def submit(
    api: httpx.AsyncClient,
    tokens: Tokens,
    user: str,
    action: str,
    target: str,
    params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    response = await api.post(
        "/api/v1/requests",
        json={"action": action, "target": target, "params": params or {}, "reason": "queue test"},
        headers=await tokens.headers(user),
    )
    assert response.status_code == 201, response.text
    return response.json()


async def withdrawal(api, tokens, new_withdrawal, amount: str = "2500.00") -> dict[str, Any]:
    return await submit(api, tokens, "fin.clerk", WITHDRAWAL, new_withdrawal(amount))


async def suspension(api, tokens, sessions, requester: str = "risk.analyst") -> dict[str, Any]:
    return await submit(api, tokens, requester, "player.suspend", new_player(sessions))


async def queue(
    api: httpx.AsyncClient, tokens: Tokens, user: str, **params: str
) -> list[dict[str, Any]]:
    response = await api.get(
        "/api/v1/tasks", params={"limit": "200", **params}, headers=await tokens.headers(user)
    )
    assert response.status_code == 200, response.text
    return response.json()["items"]


async def item_for(
    api: httpx.AsyncClient, tokens: Tokens, user: str, request_id: str, **params: str
) -> dict[str, Any] | None:
    for item in await queue(api, tokens, user, **params):
        if item["request_id"] == request_id:
            return item
    return None


async def task_of(api: httpx.AsyncClient, tokens: Tokens, user: str, request_id: str) -> int:
    found = await item_for(api, tokens, user, request_id)
    assert found is not None, f"{request_id} is not in {user}'s queue"
    return int(found["task_id"])


def ids_in(items: list[dict[str, Any]], wanted: set[str]) -> list[str]:
    """The wanted request ids in the order the queue lists them."""
    return [item["request_id"] for item in items if item["request_id"] in wanted]


def audit_events(sessions: SessionFactory, request_id: str, prefix: str) -> list[AuditEvent]:
    with sessions() as session:
        rows = session.execute(
            select(AuditEvent)
            .where(
                AuditEvent.stream == f"request:{request_id}", AuditEvent.action.like(f"{prefix}%")
            )
            .order_by(AuditEvent.seq)
        )
        return list(rows.scalars())


def decision_count(sessions: SessionFactory, request_ids: list[str]) -> int:
    with sessions() as session:
        return session.execute(
            select(func.count()).select_from(Decision).where(Decision.request_id.in_(request_ids))
        ).scalar_one()


async def claim(api, tokens, user: str, task_id: int | str) -> httpx.Response:
    return await api.post(f"/api/v1/tasks/{task_id}/claim", headers=await tokens.headers(user))


async def release(api, tokens, user: str, task_id: int | str) -> httpx.Response:
    return await api.post(f"/api/v1/tasks/{task_id}/release", headers=await tokens.headers(user))


async def bulk(api, tokens, user: str, body: dict[str, Any]) -> httpx.Response:
    return await api.post(
        "/api/v1/tasks/bulk-decision", json=body, headers=await tokens.headers(user)
    )


async def status_of(api, tokens, request_id: str, user: str = "fin.clerk") -> str:
    response = await api.get(f"/api/v1/requests/{request_id}", headers=await tokens.headers(user))
    return response.json()["status"]


async def wait_until_executed(api, tokens, request_id: str, user: str = "fin.clerk") -> None:
    for _ in range(150):
        if await status_of(api, tokens, request_id, user) == "executed":
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{request_id} never executed")


def detail_of(response: httpx.Response, *statuses: int) -> str:
    assert response.status_code in statuses, (response.status_code, response.text)
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail
    return detail


# --- claim and release -----------------------------------------------------------------


async def test_claim_and_release_round_trip_is_audited_and_shown_as_taken(
    api, tokens, new_withdrawal, sessions
):
    request = await withdrawal(api, tokens, new_withdrawal)
    task_id = await task_of(api, tokens, "fin.manager", request["id"])

    claimed = await claim(api, tokens, "fin.manager", task_id)
    assert claimed.status_code == 200, claimed.text
    assert claimed.json()["claimed_by"] == "fin.manager"
    assert claimed.json()["claimed_by_name"] == "Fiona Manager"
    assert claimed.json()["claimed_at"]

    # The other approver still sees it, marked as taken by fin.manager.
    seen = await item_for(api, tokens, "fin.manager2", request["id"])
    assert seen is not None and seen["claimed_by"] == "fin.manager"
    assert await item_for(api, tokens, "fin.manager2", request["id"], claim="unclaimed") is None
    mine = await item_for(api, tokens, "fin.manager", request["id"], claim="mine")
    assert mine is not None

    # Claiming one's own claim again changes nothing (no second audit event).
    again = await claim(api, tokens, "fin.manager", task_id)
    assert again.status_code == 200 and again.json()["claimed_by"] == "fin.manager"

    released = await release(api, tokens, "fin.manager", task_id)
    assert released.status_code == 200, released.text
    assert released.json()["claimed_by"] is None
    seen = await item_for(api, tokens, "fin.manager2", request["id"], claim="unclaimed")
    assert seen is not None and seen["claimed_by"] is None

    events = audit_events(sessions, request["id"], "task.")
    assert [e.action for e in events] == ["task.claimed", "task.released"]
    assert all(e.actor == "fin.manager" and e.channel == "api" for e in events)
    assert events[0].after is not None and events[0].after["claimed_by"] == "fin.manager"
    assert events[1].before == {"claimed_by": "fin.manager"}


async def test_someone_elses_claim_is_409_and_only_the_holder_or_a_lead_releases(
    api, tokens, sessions
):
    # Two of ops.lead, comp.officer and risk.lead decide a limit override.
    request = await submit(
        api,
        tokens,
        "ops.agent",
        "player.limit_override",
        new_player(sessions),
        {"limit": "daily_deposit_limit", "value": "500"},
    )
    task_id = await task_of(api, tokens, "ops.lead", request["id"])
    assert (await claim(api, tokens, "ops.lead", task_id)).status_code == 200

    taken = await claim(api, tokens, "comp.officer", task_id)
    assert "already taken by Oscar Lead (ops.lead)" in detail_of(taken, 409)
    # compliance.officer does not hold tasks:reassign: only the holder may release.
    refused = await release(api, tokens, "comp.officer", task_id)
    assert "ops.lead" in detail_of(refused, 403)
    seen = await item_for(api, tokens, "comp.officer", request["id"])
    assert seen is not None and seen["claimed_by"] == "ops.lead"

    # risk.lead holds tasks:reassign: a lead frees a stuck task.
    freed = await release(api, tokens, "risk.lead", task_id)
    assert freed.status_code == 200, freed.text
    assert freed.json()["claimed_by"] is None
    assert "not claimed" in detail_of(await release(api, tokens, "ops.lead", task_id), 409)
    events = audit_events(sessions, request["id"], "task.")
    assert [(e.action, e.actor) for e in events] == [
        ("task.claimed", "ops.lead"),
        ("task.released", "risk.lead"),
    ]
    assert events[1].before == {"claimed_by": "ops.lead"}


async def test_two_simultaneous_claims_one_wins(api, tokens, new_withdrawal, sessions):
    request = await withdrawal(api, tokens, new_withdrawal)
    task_id = await task_of(api, tokens, "fin.manager", request["id"])
    first, second = await asyncio.gather(
        claim(api, tokens, "fin.manager", task_id), claim(api, tokens, "fin.manager2", task_id)
    )
    assert sorted([first.status_code, second.status_code]) == [200, 409]
    assert len(audit_events(sessions, request["id"], "task.claimed")) == 1


async def test_claims_need_a_task_one_could_decide(api, tokens, new_withdrawal, sessions):
    request = await withdrawal(api, tokens, new_withdrawal)
    task_id = await task_of(api, tokens, "fin.manager", request["id"])

    # The requester (who approves nothing) may not take it.
    detail_of(await claim(api, tokens, "fin.clerk", task_id), 403)
    # Someone who may not see the request learns nothing about it.
    assert detail_of(await claim(api, tokens, "trading.lead", task_id), 404) == "task not found"
    assert detail_of(await claim(api, tokens, "fin.manager", 987654321), 404) == "task not found"
    assert detail_of(await release(api, tokens, "fin.manager", 987654321), 404)
    assert (await claim(api, tokens, "fin.manager", "abc")).status_code == 422

    decided = await api.post(
        f"/api/v1/requests/{request['id']}/decision",
        json={"decision": "approve", "comment": "ok"},
        headers=await tokens.headers("fin.manager2"),
    )
    assert decided.status_code == 200, decided.text
    assert "no longer open" in detail_of(await claim(api, tokens, "fin.manager", task_id), 409)
    assert audit_events(sessions, request["id"], "task.") == []


# --- the team queue ------------------------------------------------------------------


async def test_team_queue_shows_a_teammates_claim_and_not_another_teams_work(
    api, tokens, sessions, new_withdrawal
):
    suspend = await suspension(api, tokens, sessions)
    payout = await withdrawal(api, tokens, new_withdrawal)
    task_id = await task_of(api, tokens, "ops.lead", suspend["id"])
    assert (await claim(api, tokens, "ops.lead", task_id)).status_code == 200

    # A teammate of ops.lead (team ops-desk) who may decide it sees who holds it.
    teammate = new_user(sessions, "operations.lead", "ops-desk")
    seen = await item_for(api, tokens, teammate, suspend["id"], scope="team")
    assert seen is not None and seen["claimed_by"] == "ops.lead"
    # ops.agent is in that team but may not open the request, so it is not listed.
    assert await item_for(api, tokens, "ops.agent", suspend["id"]) is None
    assert await item_for(api, tokens, "ops.agent", suspend["id"], scope="team") is None
    hidden = await api.get(
        f"/api/v1/requests/{suspend['id']}", headers=await tokens.headers("ops.agent")
    )
    assert hidden.status_code == 404
    # risk.lead's team can decide it too, and sees who holds it.
    risk_view = await item_for(api, tokens, "risk.lead", suspend["id"], scope="team")
    assert risk_view is not None and risk_view["claimed_by"] == "ops.lead"
    # Neither appears in a team that can decide neither.
    assert await item_for(api, tokens, "trading.lead", suspend["id"], scope="team") is None
    assert await item_for(api, tokens, "trading.lead", payout["id"], scope="team") is None
    # The finance payouts team has the payout (fin.manager), not the suspension.
    assert await item_for(api, tokens, "fin.clerk", payout["id"], scope="team") is not None
    assert await item_for(api, tokens, "fin.clerk", suspend["id"], scope="team") is None


async def test_a_step_closed_to_the_requesters_team_leaves_that_teams_queue(api, tokens, sessions):
    # player.close's compliance step excludes the requester's team (ops-desk).
    teammate = new_user(sessions, "compliance.officer", "ops-desk")
    request = await submit(api, tokens, "ops.agent", "player.close", new_player(sessions))
    decided = await api.post(
        f"/api/v1/requests/{request['id']}/decision",
        json={"decision": "approve", "comment": "ok"},
        headers=await tokens.headers("ops.lead"),
    )
    assert decided.status_code == 200, decided.text
    assert await item_for(api, tokens, "comp.officer", request["id"]) is not None
    assert await item_for(api, tokens, teammate, request["id"]) is None
    assert await item_for(api, tokens, "ops.agent", request["id"], scope="team") is None
    assert await item_for(api, tokens, "ops.agent", request["id"], scope="team") is None
    refused = await claim(
        api, tokens, teammate, await task_of(api, tokens, "comp.officer", request["id"])
    )
    assert "outside the requester's team" in detail_of(refused, 403)


# --- filters and order -----------------------------------------------------------------


async def test_each_filter_narrows_and_due_soonest_comes_first(
    api, tokens, new_withdrawal, sessions
):
    small = await withdrawal(api, tokens, new_withdrawal, "150.00")
    middle = await withdrawal(api, tokens, new_withdrawal, "7000.00")
    large = await withdrawal(api, tokens, new_withdrawal, "12000.00")
    suspend = await suspension(api, tokens, sessions)
    ours = {small["id"], middle["id"], large["id"], suspend["id"]}

    # Submitted in this order, each with the same SLA: due in that order.
    everything = await queue(api, tokens, "fin.manager")
    assert ids_in(everything, ours) == [small["id"], middle["id"], large["id"]]

    # Age the last one: opened 5 hours ago, so now overdue; it moves to the top.
    now = datetime.now(UTC)
    with transaction(sessions) as session:
        session.execute(
            update(Task)
            .where(Task.request_id == large["id"], Task.status == "open")
            .values(opened_at=now - timedelta(hours=5), due_at=now - timedelta(hours=1))
        )
        session.execute(
            update(Task)
            .where(Task.request_id == middle["id"], Task.status == "open")
            .values(
                opened_at=now - timedelta(hours=3, minutes=50), due_at=now + timedelta(minutes=10)
            )
        )
    everything = await queue(api, tokens, "fin.manager")
    assert ids_in(everything, ours) == [large["id"], middle["id"], small["id"]]
    by_id = {item["request_id"]: item for item in everything}
    assert by_id[large["id"]]["sla_state"] == "breached"
    assert by_id[middle["id"]]["sla_state"] == "due_soon"
    assert by_id[small["id"]]["sla_state"] == "on_time"

    async def narrowed(**params: str) -> list[str]:
        return ids_in(await queue(api, tokens, "fin.manager", **params), ours)

    assert await narrowed(min_amount="5000") == [large["id"], middle["id"]]
    assert await narrowed(max_amount="7000") == [middle["id"], small["id"]]
    assert await narrowed(min_amount="5000", max_amount="10000") == [middle["id"]]
    assert await narrowed(sla="breached") == [large["id"]]
    assert await narrowed(sla="due_soon") == [middle["id"]]
    assert await narrowed(sla="on_time") == [small["id"]]
    assert await narrowed(older_than="3h") == [large["id"], middle["id"]]
    assert await narrowed(older_than="4h") == [large["id"]]
    assert await narrowed(action=WITHDRAWAL) == [large["id"], middle["id"], small["id"]]
    assert await narrowed(action="player.suspend") == []
    lead_view = ids_in(await queue(api, tokens, "ops.lead", action="player.suspend"), ours)
    assert lead_view == [suspend["id"]]


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"action": "payment.teleport"}, "action"),
        ({"min_amount": "lots"}, "min_amount"),
        ({"max_amount": "-5"}, "max_amount"),
        ({"min_amount": "500", "max_amount": "100"}, "max_amount"),
        ({"sla": "late"}, "sla"),
        ({"older_than": "yesterday"}, "older_than"),
        ({"older_than": "1000000d"}, "older_than"),
        ({"older_than": "99999999999999d"}, "older_than"),
        ({"min_amount": "1e200000"}, "min_amount"),
        ({"claim": "everyone"}, "claim"),
        ({"scope": "everyone"}, "scope"),
    ],
)
async def test_bad_filters_are_422_naming_the_filter(api, tokens, params, named):
    response = await api.get(
        "/api/v1/tasks", params=params, headers=await tokens.headers("fin.manager")
    )
    assert named in detail_of(response, 422)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("post", "/api/v1/tasks/99999999999999999999/claim"),
        ("post", "/api/v1/tasks/0/release"),
        ("get", "/api/v1/delegations/99999999999999999999"),
        ("post", "/api/v1/delegations/99999999999999999999/revoke"),
        ("get", "/api/v1/delegations?cursor=99999999999999999999"),
    ],
)
async def test_ids_no_row_could_have_are_422(api, tokens, method, path):
    response = await getattr(api, method)(path, headers=await tokens.headers("fin.manager"))
    assert response.status_code == 422, response.text


async def test_bulk_with_an_impossible_id_is_422(api, tokens):
    response = await api.post(
        "/api/v1/tasks/bulk-decision",
        json={"task_ids": [2**70], "decision": "approve", "comment": ""},
        headers=await tokens.headers("fin.manager"),
    )
    assert response.status_code == 422, response.text


async def test_a_user_without_a_team_has_no_team_queue(api, tokens, sessions):
    name = new_user(sessions, "finance.manager", None)
    response = await api.get("/api/v1/tasks?scope=team", headers=await tokens.headers(name))
    assert "no team" in detail_of(response, 422)


# --- bulk decisions -------------------------------------------------------------------


async def test_bulk_approve_of_three_withdrawals_executes_all(
    api, tokens, new_withdrawal, sessions
):
    requests = [await withdrawal(api, tokens, new_withdrawal, f"{n}00.00") for n in (1, 2, 3)]
    ids = [r["id"] for r in requests]
    task_ids = [await task_of(api, tokens, "fin.manager2", request_id) for request_id in ids]

    response = await bulk(
        api,
        tokens,
        "fin.manager2",
        {"task_ids": task_ids, "decision": "approve", "comment": "batch checked"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["decided"] == 3 and body["refused"] == 0
    assert [item["request_id"] for item in body["items"]] == ids
    for request_id in ids:
        await wait_until_executed(api, tokens, request_id)
    with sessions() as session:
        rows = session.execute(
            select(Decision.comment, Decision.decision).where(Decision.request_id.in_(ids))
        ).all()
    assert sorted(rows) == [("batch checked", "approve")] * 3


async def test_bulk_mixing_a_task_one_may_not_decide_decides_none(
    api, tokens, new_withdrawal, sessions
):
    payouts = [await withdrawal(api, tokens, new_withdrawal) for _ in range(2)]
    own = await submit(api, tokens, "fin.manager2", WITHDRAWAL, new_withdrawal("300.00"))
    task_ids = [await task_of(api, tokens, "fin.manager2", p["id"]) for p in payouts]
    own_task = await task_of(api, tokens, "fin.manager", own["id"])
    all_ids = [p["id"] for p in payouts] + [own["id"]]

    response = await bulk(
        api,
        tokens,
        "fin.manager2",
        {"task_ids": [*task_ids, own_task, 987654321], "decision": "approve", "comment": ""},
    )
    assert "nothing was decided" in detail_of(response, 422)
    problems = {item["task_id"]: item for item in response.json()["items"]}
    assert set(problems) == {own_task, 987654321}
    assert problems[own_task]["status"] == 403 and "own request" in problems[own_task]["detail"]
    assert problems[987654321]["status"] == 404
    assert decision_count(sessions, all_ids) == 0
    for request_id in all_ids:
        assert await status_of(api, tokens, request_id, "fin.manager2") == "pending"


async def test_bulk_on_an_action_without_bulk_decisions_is_refused(api, tokens, sessions):
    closure = await submit(api, tokens, "ops.agent", "player.close", new_player(sessions))
    suspend = await suspension(api, tokens, sessions, requester="ops.agent")
    task_ids = [
        await task_of(api, tokens, "ops.lead", closure["id"]),
        await task_of(api, tokens, "ops.lead", suspend["id"]),
    ]
    response = await bulk(
        api, tokens, "ops.lead", {"task_ids": task_ids, "decision": "reject", "comment": "no"}
    )
    assert response.status_code == 422, response.text
    [problem] = response.json()["items"]
    assert problem["task_id"] == task_ids[0]
    assert "player.close requests must be decided one at a time" in problem["detail"]
    assert decision_count(sessions, [closure["id"], suspend["id"]]) == 0


async def test_bulk_refuses_a_task_someone_else_holds(api, tokens, new_withdrawal, sessions):
    payouts = [await withdrawal(api, tokens, new_withdrawal) for _ in range(2)]
    task_ids = [await task_of(api, tokens, "fin.manager2", p["id"]) for p in payouts]
    assert (await claim(api, tokens, "fin.manager", task_ids[1])).status_code == 200
    response = await bulk(
        api, tokens, "fin.manager2", {"task_ids": task_ids, "decision": "approve"}
    )
    assert response.status_code == 422, response.text
    assert "taken by Fiona Manager" in response.json()["items"][0]["detail"]
    assert decision_count(sessions, [p["id"] for p in payouts]) == 0


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"task_ids": [], "decision": "approve"},
        {"task_ids": [1], "decision": "maybe"},
        {"task_ids": ["one"], "decision": "approve"},
        {"task_ids": [1, 1], "decision": "approve"},
        {"task_ids": [1], "decision": "approve", "comment": "x" * 2001},
        {"task_ids": [1], "decision": "approve", "extra": True},
        {"task_ids": list(range(1, 102)), "decision": "approve"},
    ],
    ids=["empty", "no-ids", "bad-decision", "text-id", "twice", "long", "extra", "too-many"],
)
async def test_malformed_bulk_bodies_are_422(api, tokens, body):
    detail_of(await bulk(api, tokens, "fin.manager", body), 422)

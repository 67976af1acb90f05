"""Delegations end to end: an approver hands their approvals to a peer for a period.

Through the API and the web page: the delegate decides in the delegator's place and the
record names both; revocation ends it at once; every refusal writes nothing.
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from core.models import AuditEvent, Delegation, User
from tests.conftest import csrf_of, sign_in_and_open


def iso(delta: timedelta) -> str:
    return (datetime.now(UTC) + delta).isoformat()


def written(sessions) -> tuple[int, int]:
    """Delegations and delegation audit events stored so far."""
    with sessions() as session:
        delegations = session.execute(select(func.count()).select_from(Delegation)).scalar_one()
        events = session.execute(
            select(func.count())
            .select_from(AuditEvent)
            .where(AuditEvent.stream.like("delegation:%"))
        ).scalar_one()
    return delegations, events


async def delegate(api, tokens, who: str, body: dict[str, Any]) -> httpx.Response:
    return await api.post("/api/v1/delegations", json=body, headers=await tokens.headers(who))


@pytest.fixture
def finance_pair(make_user):
    """A director who approves large withdrawals and a peer manager in another team."""
    director = make_user(("finance.director",), "fin-mgmt", "finance")
    peer = make_user(("finance.manager",), "fin-treasury", "finance")
    return director, peer


async def test_a_delegate_decides_for_the_director_and_both_are_named(
    api, tokens, sessions, new_withdrawal, finance_pair
):
    director, peer = finance_pair
    created = await delegate(
        api,
        tokens,
        director,
        {"delegate": peer, "ends_at": iso(timedelta(days=7)), "reason": "annual leave"},
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["delegator"], body["delegate"], body["state"]) == (director, peer, "active")
    for who in (director, peer):
        listed = await api.get("/api/v1/delegations", headers=await tokens.headers(who))
        assert body["id"] in [d["id"] for d in listed.json()["items"]]

    with sessions() as session:
        recorded = session.execute(
            select(AuditEvent).where(AuditEvent.stream == f"delegation:{body['id']}")
        ).scalar_one()
    assert (recorded.action, recorded.actor, recorded.target) == (
        "delegation.created",
        director,
        f"user:{peer}",
    )

    payment = new_withdrawal("30000.00")
    request = await api.post(
        "/api/v1/requests",
        json={"action": "payment.withdrawal", "target": payment, "params": {}, "reason": "vip"},
        headers=await tokens.headers("fin.clerk"),
    )
    request_id = request.json()["id"]
    first = await api.post(
        f"/api/v1/requests/{request_id}/decision",
        json={"decision": "approve"},
        headers=await tokens.headers("fin.manager"),
    )
    assert first.status_code == 200, first.text
    queue = await api.get("/api/v1/tasks?limit=200", headers=await tokens.headers(peer))
    assert request_id in [t["request_id"] for t in queue.json()["items"]]
    second = await api.post(
        f"/api/v1/requests/{request_id}/decision",
        json={"decision": "approve", "comment": "covering for the director"},
        headers=await tokens.headers(peer),
    )
    assert second.status_code == 200, second.text
    by_step = {d["step"]: d for d in second.json()["decisions"]}
    assert by_step[1]["user"] == peer
    assert by_step[1]["on_behalf_of"] == director


async def test_revoking_ends_the_stand_in_at_once(
    api, tokens, sessions, new_withdrawal, finance_pair
):
    director, peer = finance_pair
    created = await delegate(
        api,
        tokens,
        director,
        {"delegate": peer, "ends_at": iso(timedelta(days=2)), "reason": "off"},
    )
    delegation_id = created.json()["id"]
    by_delegate = await api.post(
        f"/api/v1/delegations/{delegation_id}/revoke", headers=await tokens.headers(peer)
    )
    assert by_delegate.status_code == 403
    assert "only the person who delegated" in by_delegate.json()["detail"]

    revoked = await api.post(
        f"/api/v1/delegations/{delegation_id}/revoke", headers=await tokens.headers(director)
    )
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["state"] == "revoked"
    again = await api.post(
        f"/api/v1/delegations/{delegation_id}/revoke", headers=await tokens.headers(director)
    )
    assert again.status_code == 409

    payment = new_withdrawal("40000.00")
    request = await api.post(
        "/api/v1/requests",
        json={"action": "payment.withdrawal", "target": payment, "params": {}, "reason": "vip"},
        headers=await tokens.headers("fin.clerk"),
    )
    request_id = request.json()["id"]
    await api.post(
        f"/api/v1/requests/{request_id}/decision",
        json={"decision": "approve"},
        headers=await tokens.headers("fin.manager"),
    )
    refused = await api.post(
        f"/api/v1/requests/{request_id}/decision",
        json={"decision": "approve"},
        headers=await tokens.headers(peer),
    )
    assert refused.status_code == 403, refused.text
    with sessions() as session:
        actions = session.execute(
            select(AuditEvent.action)
            .where(AuditEvent.stream == f"delegation:{delegation_id}")
            .order_by(AuditEvent.seq)
        ).scalars()
        assert list(actions) == ["delegation.created", "delegation.revoked"]


async def test_an_admin_delegates_for_an_absent_director(api, tokens, finance_pair):
    director, peer = finance_pair
    body = {
        "delegate": peer,
        "delegator": director,
        "ends_at": iso(timedelta(days=3)),
        "reason": "director is ill",
    }
    refused = await delegate(api, tokens, "fin.manager", body)
    assert refused.status_code == 403
    created = await delegate(api, tokens, "admin", body)
    assert created.status_code == 201, created.text
    assert created.json()["delegator"] == director
    everyone = await api.get(
        "/api/v1/delegations?everyone=true", headers=await tokens.headers("admin")
    )
    assert created.json()["id"] in [d["id"] for d in everyone.json()["items"]]
    not_manager = await api.get(
        "/api/v1/delegations?everyone=true", headers=await tokens.headers(peer)
    )
    assert not_manager.status_code == 403


BAD_DELEGATIONS = [
    ("to oneself", lambda d, p: {"delegate": d}, 422, "yourself"),
    ("unknown delegate", lambda d, p: {"delegate": "nobody.here"}, 422, "no active user"),
    ("not a peer", lambda d, p: {"delegate": "crm.manager"}, 403, "not a peer"),
    ("ends before start", lambda d, p: {"ends_at": iso(timedelta(hours=-1))}, 422, "after"),
    (
        "starts in the past",
        lambda d, p: {"starts_at": iso(timedelta(days=-2)), "ends_at": iso(timedelta(days=1))},
        422,
        "past",
    ),
    ("longer than 90 days", lambda d, p: {"ends_at": iso(timedelta(days=91))}, 422, "90 days"),
    (
        "starts over a year ahead",
        lambda d, p: {"starts_at": iso(timedelta(days=400)), "ends_at": iso(timedelta(days=401))},
        422,
        "a year",
    ),
    (
        "past the calendar's end in UTC",
        lambda d, p: {
            "starts_at": "9999-12-31T00:00:00-14:00",
            "ends_at": "9999-12-31T23:00:00-14:00",
        },
        422,
        "a year",
    ),
    ("blank reason", lambda d, p: {"reason": "   "}, 422, "reason"),
    ("reason with NUL", lambda d, p: {"reason": "a\x00b"}, 422, "control characters"),
]


@pytest.mark.parametrize(
    ("case", "change", "status", "says"), BAD_DELEGATIONS, ids=[b[0] for b in BAD_DELEGATIONS]
)
async def test_bad_delegations_are_refused_and_write_nothing(
    api, tokens, sessions, finance_pair, case, change, status, says
):
    director, peer = finance_pair
    body = {"delegate": peer, "ends_at": iso(timedelta(days=1)), "reason": "leave"}
    body.update(change(director, peer))
    before = written(sessions)
    refused = await delegate(api, tokens, director, body)
    assert refused.status_code == status, refused.text
    assert says in refused.json()["detail"]
    assert written(sessions) == before


async def test_refusals_that_depend_on_who_and_when(api, tokens, sessions, finance_pair, make_user):
    director, peer = finance_pair
    body = {"delegate": peer, "ends_at": iso(timedelta(days=5)), "reason": "leave"}
    clerk = make_user(("finance.clerk",), "fin-payouts", "finance")
    before = written(sessions)
    nothing = await delegate(api, tokens, clerk, body)
    assert nothing.status_code == 403
    assert "approves nothing" in nothing.json()["detail"]
    assert written(sessions) == before

    assert (await delegate(api, tokens, director, body)).status_code == 201
    before = written(sessions)
    overlap = await delegate(api, tokens, director, {**body, "starts_at": iso(timedelta(days=1))})
    assert overlap.status_code == 409
    assert "revoke it first" in overlap.json()["detail"]
    away = await delegate(api, tokens, peer, {**body, "delegate": director})
    assert away.status_code == 409
    assert "choose someone who is present" in away.json()["detail"]
    assert written(sessions) == before


@pytest.mark.parametrize(
    "payload",
    [
        b"{not json",
        b'{"delegate": "x", "reason": "r"}',
        b'{"delegate": "x", "reason": "r", "ends_at": "next tuesday"}',
        b'{"delegate": 5, "reason": "r", "ends_at": "2030-01-01T00:00:00Z"}',
        b'{"delegate": "x", "reason": "r", "ends_at": "2030-01-01T00:00:00Z", "extra": 1}',
        b'{"delegate": "a\\u0000b", "reason": "r", "ends_at": "2030-01-01T00:00:00Z"}',
        b'{"delegate": "x", "delegator": "\\u0007", "reason": "r", "ends_at": "2030-01-01"}',
    ],
)
async def test_malformed_bodies_are_422(api, tokens, sessions, payload):
    before = written(sessions)
    headers = {**await tokens.headers("fin.director"), "Content-Type": "application/json"}
    refused = await api.post("/api/v1/delegations", content=payload, headers=headers)
    assert refused.status_code == 422, refused.text
    assert refused.json()["detail"]
    assert written(sessions) == before


async def test_unknown_and_foreign_delegations_are_404(api, tokens, finance_pair):
    director, peer = finance_pair
    created = await delegate(
        api, tokens, director, {"delegate": peer, "ends_at": iso(timedelta(days=1)), "reason": "x"}
    )
    delegation_id = created.json()["id"]
    outsider = await api.get(
        f"/api/v1/delegations/{delegation_id}", headers=await tokens.headers("crm.manager")
    )
    assert outsider.status_code == 404
    missing = await api.post(
        "/api/v1/delegations/999999999/revoke", headers=await tokens.headers(director)
    )
    assert missing.status_code == 404
    bad_id = await api.get("/api/v1/delegations/abc", headers=await tokens.headers(director))
    assert bad_id.status_code == 422
    no_token = await api.get("/api/v1/delegations")
    assert no_token.status_code == 401


# --- the web page -------------------------------------------------------------------


async def open_delegations_page(web: httpx.AsyncClient, username: str) -> str:
    """Sign in through the login form; returns the CSRF token of the delegations page."""
    page = await sign_in_and_open(web, username, "/delegations")
    assert page.status_code == 200
    return csrf_of(page)


async def test_the_page_delegates_shows_and_revokes(web, sessions, finance_pair):
    director, peer = finance_pair
    csrf = await open_delegations_page(web, director)
    ends = (datetime.now(UTC) + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M")

    before = written(sessions)
    not_peer = await web.post(
        "/delegations",
        data={"csrf_token": csrf, "delegate": "trading.lead", "ends_at": ends, "reason": "leave"},
    )
    assert not_peer.status_code == 403
    assert "not a peer" in not_peer.text
    assert 'value="trading.lead"' in not_peer.text  # what was typed stays in the form
    no_end = await web.post(
        "/delegations", data={"csrf_token": csrf, "delegate": peer, "reason": "leave"}
    )
    assert no_end.status_code == 422
    assert 'id="ends_at-error"' in no_end.text
    assert written(sessions) == before

    created = await web.post(
        "/delegations",
        data={"csrf_token": csrf, "delegate": peer, "ends_at": ends, "reason": "leave"},
    )
    assert created.status_code == 200  # followed the redirect back to the page
    assert "Your delegations" in created.text
    assert "Active" in created.text
    row = re.search(r'id="delegation-(\d+)"', created.text)
    assert row, created.text
    delegation_id = int(row.group(1))

    revoked = await web.post(f"/delegations/{delegation_id}/revoke", data={"csrf_token": csrf})
    assert revoked.status_code == 200
    assert "Revoked" in revoked.text
    forged = await web.post(f"/delegations/{delegation_id}/revoke", data={"csrf_token": "x"})
    assert forged.status_code == 403


async def test_the_delegate_sees_whom_they_decide_for(
    web, api, tokens, new_withdrawal, finance_pair
):
    director, peer = finance_pair
    await delegate(
        api, tokens, director, {"delegate": peer, "ends_at": iso(timedelta(days=1)), "reason": "x"}
    )
    request = await api.post(
        "/api/v1/requests",
        json={
            "action": "payment.withdrawal",
            "target": new_withdrawal("15000.00"),
            "params": {},
            "reason": "vip",
        },
        headers=await tokens.headers("fin.clerk"),
    )
    request_id = request.json()["id"]
    await api.post(
        f"/api/v1/requests/{request_id}/decision",
        json={"decision": "approve", "comment": "fine"},
        headers=await tokens.headers("fin.manager"),
    )
    await open_delegations_page(web, peer)
    page = await web.get(f"/requests/{request_id}")
    assert page.status_code == 200
    assert "You decide for" in page.text and director in page.text
    assert "Level 2 of 2" in page.text or "level 2 of 2" in page.text
    assert "Approved</strong> by fin.manager" in page.text
    assert "fine" in page.text


async def test_concurrent_delegations_by_one_person_leave_one(api, tokens, sessions, make_user):
    director = make_user(("finance.director",), "fin-mgmt", "finance")
    peers = [make_user(("finance.manager",), "fin-treasury", "finance") for _ in range(4)]
    ends = iso(timedelta(days=3))
    answers = await asyncio.gather(
        *(
            delegate(api, tokens, director, {"delegate": p, "ends_at": ends, "reason": "away"})
            for p in peers
        )
    )
    assert sorted(a.status_code for a in answers) == [201, 409, 409, 409]
    with sessions() as session:
        kept = session.execute(
            select(func.count())
            .select_from(Delegation)
            .join(User, User.id == Delegation.delegator_id)
            .where(User.username == director)
        ).scalar_one()
    assert kept == 1


async def test_two_people_cannot_stand_in_for_each_other(api, tokens, make_user):
    first = make_user(("finance.manager",), "fin-payouts", "finance")
    second = make_user(("finance.manager",), "fin-treasury", "finance")
    ends = iso(timedelta(days=3))
    answers = await asyncio.gather(
        delegate(api, tokens, first, {"delegate": second, "ends_at": ends, "reason": "x"}),
        delegate(api, tokens, second, {"delegate": first, "ends_at": ends, "reason": "x"}),
    )
    assert sorted(a.status_code for a in answers) == [201, 409]


async def test_a_delegate_without_a_role_on_the_chain_opens_claims_and_decides(
    api, tokens, new_withdrawal, make_user
):
    manager = make_user(("finance.manager",), "fin-payouts", "finance")
    analyst = make_user(("finance.reconciliation_analyst",), "fin-recon", "finance")
    created = await delegate(
        api,
        tokens,
        manager,
        {"delegate": analyst, "ends_at": iso(timedelta(days=1)), "reason": "x"},
    )
    assert created.status_code == 201, created.text
    request = await api.post(
        "/api/v1/requests",
        json={
            "action": "payment.withdrawal",
            "target": new_withdrawal("2500.00"),
            "params": {},
            "reason": "payout",
        },
        headers=await tokens.headers("fin.clerk"),
    )
    request_id = request.json()["id"]
    headers = await tokens.headers(analyst)
    assert (await api.get(f"/api/v1/requests/{request_id}", headers=headers)).status_code == 200
    queue = await api.get("/api/v1/tasks?limit=200", headers=headers)
    task = next(t for t in queue.json()["items"] if t["request_id"] == request_id)
    claimed = await api.post(f"/api/v1/tasks/{task['task_id']}/claim", headers=headers)
    assert claimed.status_code == 200, claimed.text
    decided = await api.post(
        f"/api/v1/requests/{request_id}/decision", json={"decision": "approve"}, headers=headers
    )
    assert decided.status_code == 200, decided.text
    assert decided.json()["decisions"][0]["on_behalf_of"] == manager

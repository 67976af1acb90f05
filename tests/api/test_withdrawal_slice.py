"""The withdrawal slice end to end through the HTTP API, on real PostgreSQL and Temporal."""

from __future__ import annotations

import asyncio

import httpx
from sqlalchemy import func, select

from core.db import SessionFactory
from core.models import AuditEvent, Payment
from tests.conftest import Tokens

WITHDRAWAL = "payment.withdrawal"


async def submit(
    api: httpx.AsyncClient, tokens: Tokens, payment_id: str, **extra
) -> httpx.Response:
    body = {
        "action": WITHDRAWAL,
        "target": payment_id,
        "params": {},
        "reason": "player asked",
        **extra,
    }
    return await api.post("/api/v1/requests", json=body, headers=await tokens.headers("fin.clerk"))


async def decide(
    api: httpx.AsyncClient, tokens: Tokens, user: str, request_id: str, decision: str = "approve"
) -> httpx.Response:
    return await api.post(
        f"/api/v1/requests/{request_id}/decision",
        json={"decision": decision, "comment": f"{decision} by {user}"},
        headers=await tokens.headers(user),
    )


async def wait_for_status(
    api: httpx.AsyncClient, tokens: Tokens, request_id: str, status: str
) -> dict:
    body: dict = {}
    for _ in range(100):
        response = await api.get(
            f"/api/v1/requests/{request_id}", headers=await tokens.headers("fin.clerk")
        )
        body = response.json()
        if body["status"] == status:
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"request stayed {body.get('status')}, expected {status}")


def audit_actions(sessions: SessionFactory, request_id: str) -> list[str]:
    with sessions() as session:
        rows = session.execute(
            select(AuditEvent.action)
            .where(AuditEvent.stream == f"request:{request_id}")
            .order_by(AuditEvent.seq)
        )
        return list(rows.scalars())


async def test_small_withdrawal_needs_one_manager_and_pays_once(
    api, tokens, new_withdrawal, sessions
):
    payment_id = new_withdrawal("2500.00")
    created = await submit(api, tokens, payment_id)
    assert created.status_code == 201, created.text
    request = created.json()
    assert request["status"] == "pending"
    assert request["params"] == {"amount": "2500.00"}
    assert [s["name"] for s in request["steps"]] == ["Finance manager approval"]
    assert request["steps"][0]["status"] == "open" and request["steps"][0]["due_at"]

    only_this = "/api/v1/tasks?min_amount=2500&max_amount=2500&limit=200"
    queue = await api.get(only_this, headers=await tokens.headers("fin.manager"))
    assert request["id"] in [t["request_id"] for t in queue.json()["items"]]
    clerk_queue = await api.get(only_this, headers=await tokens.headers("fin.clerk"))
    assert request["id"] not in [t["request_id"] for t in clerk_queue.json()["items"]]

    approved = await decide(api, tokens, "fin.manager", request["id"])
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] in ("approved", "executed")
    done = await wait_for_status(api, tokens, request["id"], "executed")
    assert done["outcome"] == f"Paid 2500.00 EUR for {payment_id}"
    assert done["decisions"][0]["user"] == "fin.manager"

    with sessions() as session:
        payment = session.get(Payment, payment_id)
        assert payment is not None and payment.status == "paid"
        assert str(payment.paid_by_request) == request["id"]
    assert audit_actions(sessions, request["id"]) == [
        "request.submitted",
        "request.step_opened",
        "request.decision",
        "request.step_approved",
        "request.approved",
        "request.executed",
    ]


async def test_large_withdrawal_needs_the_director_too(api, tokens, new_withdrawal):
    payment_id = new_withdrawal("10000.00")
    request = (await submit(api, tokens, payment_id)).json()
    assert request["tier"] == "large"
    assert [s["roles"] for s in request["steps"]] == [["finance.manager"], ["finance.director"]]

    after_manager = (await decide(api, tokens, "fin.manager", request["id"])).json()
    assert after_manager["status"] == "pending"
    assert after_manager["current_step"] == 1
    assert after_manager["steps"][0]["status"] == "approved"
    assert after_manager["steps"][1]["status"] == "open"

    director_queue = await api.get(
        "/api/v1/tasks?min_amount=10000&max_amount=10000&limit=200",
        headers=await tokens.headers("fin.director"),
    )
    assert request["id"] in [t["request_id"] for t in director_queue.json()["items"]]

    await decide(api, tokens, "fin.director", request["id"])
    await wait_for_status(api, tokens, request["id"], "executed")


async def test_rejection_leaves_the_payment_pending(api, tokens, new_withdrawal, sessions):
    payment_id = new_withdrawal("120.00")
    request = (await submit(api, tokens, payment_id)).json()
    rejected = await decide(api, tokens, "fin.manager", request["id"], "reject")
    assert rejected.status_code == 200
    assert rejected.json()["status"] == "rejected"
    assert rejected.json()["steps"][0]["status"] == "rejected"
    with sessions() as session:
        assert session.get(Payment, payment_id).status == "pending"
    assert audit_actions(sessions, request["id"])[-1] == "request.rejected"


async def test_requester_cancels_and_no_one_can_decide_after(api, tokens, new_withdrawal):
    request = (await submit(api, tokens, new_withdrawal("75.00"))).json()
    other = await api.post(
        f"/api/v1/requests/{request['id']}/cancel",
        json={"reason": "typo"},
        headers=await tokens.headers("fin.manager"),
    )
    assert other.status_code == 403
    cancelled = await api.post(
        f"/api/v1/requests/{request['id']}/cancel",
        json={"reason": "typo"},
        headers=await tokens.headers("fin.clerk"),
    )
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    late = await decide(api, tokens, "fin.manager", request["id"])
    assert late.status_code == 409
    assert "cancelled" in late.json()["detail"]


async def test_request_lists_are_keyset_paginated(api, tokens, new_withdrawal):
    for _ in range(3):
        assert (await submit(api, tokens, new_withdrawal("10.00"))).status_code == 201
    headers = await tokens.headers("fin.clerk")
    first = (await api.get("/api/v1/requests?limit=2", headers=headers)).json()
    assert len(first["items"]) == 2 and first["next"]
    second = (
        await api.get(f"/api/v1/requests?limit=2&cursor={first['next']}", headers=headers)
    ).json()
    seen = {i["id"] for i in first["items"]}
    assert second["items"] and not seen & {i["id"] for i in second["items"]}
    created = [i["created_at"] for i in first["items"] + second["items"]]
    assert created == sorted(created, reverse=True)


async def test_audit_search_filters_by_stream_and_actor(api, tokens, new_withdrawal):
    request = (await submit(api, tokens, new_withdrawal("42.00"))).json()
    await decide(api, tokens, "fin.manager", request["id"])
    await wait_for_status(api, tokens, request["id"], "executed")
    headers = await tokens.headers("comp.officer")
    stream = await api.get(f"/api/v1/audit?stream=request:{request['id']}", headers=headers)
    assert stream.status_code == 200
    actions = [e["action"] for e in stream.json()["items"]]
    assert actions[0] == "request.executed" and actions[-1] == "request.submitted"
    by_actor = await api.get(
        f"/api/v1/audit?stream=request:{request['id']}&actor=fin.manager", headers=headers
    )
    assert [e["action"] for e in by_actor.json()["items"]] == ["request.decision"]
    page = await api.get(f"/api/v1/audit?stream=request:{request['id']}&limit=2", headers=headers)
    assert len(page.json()["items"]) == 2 and page.json()["next"]
    rest = await api.get(
        f"/api/v1/audit?stream=request:{request['id']}&limit=50&cursor={page.json()['next']}",
        headers=headers,
    )
    assert len(rest.json()["items"]) == len(actions) - 2
    forbidden = await api.get("/api/v1/audit", headers=await tokens.headers("fin.clerk"))
    assert forbidden.status_code == 403


async def test_concurrent_approvals_by_two_managers_record_one(
    api, tokens, new_withdrawal, sessions
):
    request = (await submit(api, tokens, new_withdrawal("300.00"))).json()
    first, second = await asyncio.gather(
        decide(api, tokens, "fin.manager", request["id"]),
        decide(api, tokens, "fin.manager2", request["id"]),
    )
    assert sorted([first.status_code, second.status_code]) == [200, 409]
    await wait_for_status(api, tokens, request["id"], "executed")
    with sessions() as session:
        decisions = session.execute(
            select(func.count())
            .select_from(AuditEvent)
            .where(
                AuditEvent.stream == f"request:{request['id']}",
                AuditEvent.action == "request.decision",
            )
        ).scalar_one()
    assert decisions == 1

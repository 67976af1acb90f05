"""Data scope through the HTTP API: regions, segments and money limits of requesters and
approvers, on real PostgreSQL and Temporal. Each privilege-escalation attempt is refused
(403) and recorded as a security event."""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError

from core.db import SessionFactory, transaction
from core.models import ApprovalRequest, AuditEvent, Payment, Player
from core.runtime import Runtime
from tests.conftest import Tokens, sign_in_and_open
from workflows.approval import ApprovalWorkflow
from workflows.contracts import DecisionInput, ScopeInput, approval_workflow_id

WITHDRAWAL = "payment.withdrawal"


def insert_withdrawal(
    sessions: SessionFactory, region: str, segment: str = "regular", amount: str = "2500.00"
) -> str:
    """A pending withdrawal of a new player in this region and segment; returns its id."""
    suffix = secrets.token_hex(5).upper()
    with transaction(sessions) as session:
        session.add(
            Player(
                id=f"PLR-S{suffix}",
                username=f"scope-{suffix}",
                region=region,
                segment=segment,
                vip_tier="none",
                status="active",
            )
        )
        session.flush()
        session.add(
            Payment(
                id=f"PAY-S{suffix}",
                player_id=f"PLR-S{suffix}",
                kind="withdrawal",
                amount=Decimal(amount),
                currency="EUR",
                method="bank_transfer",
                status="pending",
            )
        )
    return f"PAY-S{suffix}"


def out_of_scope_events(sessions: SessionFactory, username: str) -> list[dict[str, Any]]:
    """What each recorded out-of-scope attempt of this person says (all are security events)."""
    with sessions() as session:
        events = list(
            session.execute(
                select(AuditEvent)
                .where(
                    AuditEvent.stream == f"user:{username}",
                    AuditEvent.action == "access.out_of_scope",
                )
                .order_by(AuditEvent.seq)
            ).scalars()
        )
    assert {event.sensitivity for event in events} <= {"security"}
    return [event.after or {} for event in events]


def requests_on(sessions: SessionFactory, target: str) -> int:
    with sessions() as session:
        return session.execute(
            select(func.count())
            .select_from(ApprovalRequest)
            .where(ApprovalRequest.target == target)
        ).scalar_one()


async def submit(
    api: httpx.AsyncClient, tokens: Tokens, who: str, target: str, **params: str
) -> httpx.Response:
    body = {"action": WITHDRAWAL, "target": target, "params": params, "reason": "player asked"}
    return await api.post("/api/v1/requests", json=body, headers=await tokens.headers(who))


async def decide(api: httpx.AsyncClient, tokens: Tokens, who: str, request_id: str):
    return await api.post(
        f"/api/v1/requests/{request_id}/decision",
        json={"decision": "approve", "comment": "ok"},
        headers=await tokens.headers(who),
    )


async def all_payments(api: httpx.AsyncClient, headers: dict[str, str]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params = {"limit": "200", **({"cursor": cursor} if cursor else {})}
        response = await api.get("/api/v1/payments", params=params, headers=headers)
        assert response.status_code == 200, response.text
        items += response.json()["items"]
        cursor = response.json()["next"]
        if cursor is None:
            return items


async def test_payments_list_only_the_callers_regions(api, tokens, sessions, make_user):
    uk_payment, de_payment = insert_withdrawal(sessions, "UK"), insert_withdrawal(sessions, "DE")
    de_clerk = make_user(("finance.payments_clerk_de",), "fin-payouts-de", "finance")
    uk_clerk = make_user(("finance.payments_clerk_uk",), "fin-payouts-uk", "finance")

    de_items = await all_payments(api, await tokens.headers(de_clerk))
    uk_items = await all_payments(api, await tokens.headers(uk_clerk))

    assert de_items and {item["region"] for item in de_items} == {"DE"}
    assert {item["region"] for item in uk_items} <= {"UK", "IE"}
    assert uk_payment in {item["id"] for item in uk_items}
    assert de_payment in {item["id"] for item in de_items}
    assert uk_payment not in {item["id"] for item in de_items}


async def test_a_request_outside_ones_region_is_refused_and_recorded(
    api, tokens, sessions, make_user, new_withdrawal
):
    payment = new_withdrawal()
    de_clerk = make_user(("finance.payments_clerk_de",), "fin-payouts-de", "finance")

    response = await submit(api, tokens, de_clerk, payment)

    assert response.status_code == 403, response.text
    assert response.json()["detail"] == "region UK is outside your scope (DE)"
    assert requests_on(sessions, payment) == 0
    assert out_of_scope_events(sessions, de_clerk) == [
        {
            "attempt": "request",
            "action": WITHDRAWAL,
            "target": payment,
            "code": "region_out_of_scope",
            "reason": "region UK is outside your scope (DE)",
        }
    ]


async def test_a_player_action_outside_ones_segments_is_refused(
    api, tokens, sessions, make_user, new_withdrawal
):
    analyst = make_user(("risk.bonus_abuse_analyst",), "risk-fraud", "risk")
    with sessions() as session:
        payment = session.get(Payment, new_withdrawal())
        assert payment is not None
        player_id = payment.player_id  # a "regular" player: not a segment the analyst reaches

    response = await api.post(
        "/api/v1/requests",
        json={"action": "player.suspend", "target": player_id, "params": {}, "reason": "abuse"},
        headers=await tokens.headers(analyst),
    )

    assert response.status_code == 403, response.text
    assert "player segment regular is outside your scope" in response.json()["detail"]
    assert requests_on(sessions, player_id) == 0
    assert [e["code"] for e in out_of_scope_events(sessions, analyst)] == ["segment_out_of_scope"]


async def test_a_request_above_ones_limit_is_refused_and_one_within_it_accepted(
    api, tokens, sessions, make_user, new_withdrawal
):
    uk_clerk = make_user(("finance.payments_clerk_uk",), "fin-payouts-uk", "finance")
    large, small = new_withdrawal("30000.00"), new_withdrawal("2500.00")

    refused = await submit(api, tokens, uk_clerk, large)
    accepted = await submit(api, tokens, uk_clerk, small)

    assert refused.status_code == 403, refused.text
    assert refused.json()["detail"] == "amount 30000.00 is above your limit of 25000.00"
    assert requests_on(sessions, large) == 0
    assert accepted.status_code == 201, accepted.text
    with sessions() as session:
        stored = session.get(ApprovalRequest, uuid.UUID(accepted.json()["id"]))
        assert stored is not None
        assert (stored.region, stored.segment) == ("UK", "regular")
    assert [e["code"] for e in out_of_scope_events(sessions, uk_clerk)] == ["over_limit"]


async def test_approving_above_ones_limit_is_refused_recorded_and_hidden_from_the_queue(
    api, tokens, sessions, make_user, new_withdrawal
):
    manager = make_user(("finance.manager",), "fin-treasury", "finance")  # limit 500,000
    payment = new_withdrawal("600000.00")
    created = await submit(api, tokens, "fin.director", payment)
    assert created.status_code == 201, created.text
    request_id = created.json()["id"]

    queue = await api.get(
        "/api/v1/tasks?min_amount=600000&max_amount=600000&limit=200",
        headers=await tokens.headers(manager),
    )
    refused = await decide(api, tokens, manager, request_id)

    assert request_id not in {item["request_id"] for item in queue.json()["items"]}
    assert refused.status_code == 403, refused.text
    assert refused.json()["detail"] == "amount 600000.00 is above your limit of 500000.00"
    [event] = out_of_scope_events(sessions, manager)
    assert (event["attempt"], event["request"], event["code"]) == (
        "decision",
        request_id,
        "over_limit",
    )
    shown = await api.get(
        f"/api/v1/requests/{request_id}", headers=await tokens.headers("fin.director")
    )
    assert shown.json()["status"] == "pending"


async def test_a_delegate_is_held_to_the_delegators_limit(
    api, tokens, sessions, make_user, new_withdrawal
):
    manager = make_user(("finance.manager",), "fin-treasury", "finance")  # limit 500,000
    director = make_user(("finance.director",), "fin-mgmt", "finance")  # no limit
    handed = await api.post(
        "/api/v1/delegations",
        json={
            "delegate": director,
            "ends_at": (datetime.now(UTC) + timedelta(days=2)).isoformat(),
            "reason": "leave",
        },
        headers=await tokens.headers(manager),
    )
    assert handed.status_code == 201, handed.text
    created = await submit(api, tokens, "fin.director", new_withdrawal("600000.00"))
    assert created.status_code == 201, created.text

    # The first step needs a finance manager: the director may take it only for the manager.
    refused = await decide(api, tokens, director, created.json()["id"])

    assert refused.status_code == 403, refused.text
    assert refused.json()["detail"] == (
        f"for {manager}, whom you stand in for: amount 600000.00 is above your limit of 500000.00"
    )
    assert [e["code"] for e in out_of_scope_events(sessions, director)] == ["over_limit"]


async def test_the_workflow_refuses_a_decision_whose_scope_does_not_cover_the_request(
    api, tokens, runtime: Runtime, new_withdrawal
):
    """Whatever the entry point, the decide validator re-checks the scope it is given."""
    created = await submit(api, tokens, "fin.clerk", new_withdrawal())
    assert created.status_code == 201, created.text
    handle = runtime.temporal.get_workflow_handle(approval_workflow_id(created.json()["id"]))
    command = DecisionInput(
        user="fin.manager",
        user_id=0,
        roles=["finance.manager"],
        decision="approve",
        scopes=[ScopeInput(regions=["DE"], segments=["*"], max_amount=None)],
    )

    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update(ApprovalWorkflow.decide, command)

    cause = refused.value.cause
    assert isinstance(cause, ApplicationError)
    assert (cause.type, cause.message) == (
        "region_out_of_scope",
        "region UK is outside your scope (DE)",
    )
    state = await handle.query(ApprovalWorkflow.state)
    assert state.status == "pending" and state.steps[0].approvers == []


async def test_the_workflow_refuses_a_decision_that_carries_no_scope(
    api, tokens, runtime, new_withdrawal
):
    """An entry point that forgets to say what the decider reaches is refused, not trusted."""
    created = await submit(api, tokens, "fin.clerk", new_withdrawal())
    assert created.status_code == 201, created.text
    handle = runtime.temporal.get_workflow_handle(approval_workflow_id(created.json()["id"]))
    command = DecisionInput(
        user="fin.manager", user_id=0, roles=["finance.manager"], decision="approve"
    )

    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update(ApprovalWorkflow.decide, command)

    cause = refused.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == "missing_scope"
    state = await api.get(
        f"/api/v1/requests/{created.json()['id']}", headers=await tokens.headers("fin.clerk")
    )
    assert state.json()["decisions"] == []


async def test_the_request_forms_picker_offers_only_withdrawals_one_may_ask_for(
    web, sessions, make_user
):
    in_scope = insert_withdrawal(sessions, "DE")
    above_limit = insert_withdrawal(sessions, "DE", amount="30000.00")
    other_region = insert_withdrawal(sessions, "UK")
    de_clerk = make_user(("finance.payments_clerk_de",), "fin-payouts-de", "finance")
    form = await sign_in_and_open(web, de_clerk, f"/requests/new?action={WITHDRAWAL}")

    assert form.status_code == 200
    assert f'<option value="{in_scope}"' in form.text
    assert f'<option value="{above_limit}"' not in form.text
    assert f'<option value="{other_region}"' not in form.text

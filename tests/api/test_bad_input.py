"""Bad input through the JSON API: a clear 4xx with a JSON `detail`, nothing written, no 500.

Each test checks what a client sees (status code and message) and what the database holds
afterwards: no new request or audit event for the target, the payment still pending, and,
for refused decisions, the request exactly as it was.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import func, or_, select
from temporalio.client import Client

from api.app import create_app
from core import request_service
from core.db import SessionFactory, transaction
from core.models import ApprovalRequest, AuditEvent, Decision, Payment, Task
from tests.conftest import Tokens

WITHDRAWAL = "payment.withdrawal"
JSON = {"Content-Type": "application/json"}


# --- helpers --------------------------------------------------------------------------


def body_for(payment_id: str, **overrides: Any) -> dict[str, Any]:
    return {
        "action": WITHDRAWAL,
        "target": payment_id,
        "params": {},
        "reason": "player asked",
        **overrides,
    }


async def submit(
    api: httpx.AsyncClient, tokens: Tokens, body: Any, user: str = "fin.clerk"
) -> httpx.Response:
    return await api.post("/api/v1/requests", json=body, headers=await tokens.headers(user))


async def decide(
    api: httpx.AsyncClient,
    tokens: Tokens,
    user: str,
    request_id: str,
    decision: str = "approve",
) -> httpx.Response:
    return await api.post(
        f"/api/v1/requests/{request_id}/decision",
        json={"decision": decision, "comment": f"{decision} by {user}"},
        headers=await tokens.headers(user),
    )


async def create_request(
    api: httpx.AsyncClient, tokens: Tokens, payment_id: str, user: str = "fin.clerk"
) -> dict[str, Any]:
    response = await submit(api, tokens, body_for(payment_id), user)
    assert response.status_code == 201, response.text
    return response.json()


async def wait_for_status(
    api: httpx.AsyncClient, tokens: Tokens, request_id: str, status: str
) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for _ in range(100):
        response = await api.get(
            f"/api/v1/requests/{request_id}", headers=await tokens.headers("comp.officer")
        )
        body = response.json()
        if body["status"] == status:
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"request stayed {body.get('status')}, expected {status}")


def detail_of(response: httpx.Response, *statuses: int) -> str:
    """The response is one of `statuses`, JSON, with a non-empty string `detail`."""
    assert response.status_code in statuses, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail.strip(), response.text
    return detail


@dataclass(frozen=True)
class TargetState:
    requests: int
    audit_events: int
    payment_status: str | None


def target_state(sessions: SessionFactory, payment_id: str) -> TargetState:
    """Requests for the payment, audit events about it or its requests, the payment status."""
    with sessions() as session:
        request_ids = list(
            session.execute(
                select(ApprovalRequest.id).where(ApprovalRequest.target == payment_id)
            ).scalars()
        )
        streams = [f"request:{rid}" for rid in request_ids]
        audit_events = session.execute(
            select(func.count())
            .select_from(AuditEvent)
            .where(or_(AuditEvent.target == payment_id, AuditEvent.stream.in_(streams or [""])))
        ).scalar_one()
        payment = session.get(Payment, payment_id)
        return TargetState(len(request_ids), audit_events, payment.status if payment else None)


def assert_nothing_written(sessions: SessionFactory, payment_id: str) -> None:
    assert target_state(sessions, payment_id) == TargetState(0, 0, "pending")


@dataclass(frozen=True)
class RequestState:
    status: str
    current_step: int
    steps: tuple[tuple[str, int], ...]
    decisions: int
    audit_events: int
    payment_status: str | None


def request_state(sessions: SessionFactory, request_id: str) -> RequestState:
    rid = uuid.UUID(request_id)
    with sessions() as session:
        request = session.get(ApprovalRequest, rid)
        assert request is not None
        steps = session.execute(
            select(Task.status, Task.approvals)
            .where(Task.request_id == rid)
            .order_by(Task.step_index)
        ).all()
        decisions = session.execute(
            select(func.count()).select_from(Decision).where(Decision.request_id == rid)
        ).scalar_one()
        audit_events = session.execute(
            select(func.count())
            .select_from(AuditEvent)
            .where(AuditEvent.stream == f"request:{request_id}")
        ).scalar_one()
        payment = session.get(Payment, request.target)
        return RequestState(
            status=request.status,
            current_step=request.current_step,
            steps=tuple((s.status, s.approvals) for s in steps),
            decisions=decisions,
            audit_events=audit_events,
            payment_status=payment.status if payment else None,
        )


def cursor_of(values: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


# --- POST /requests: body shape --------------------------------------------------------


async def test_malformed_json_body_on_create_is_422(api, tokens, new_withdrawal, sessions):
    payment_id = new_withdrawal("100.00")
    response = await api.post(
        "/api/v1/requests",
        content=f'{{"action": "{WITHDRAWAL}", "target": "{payment_id}", "params": {{',
        headers={**JSON, **await tokens.headers("fin.clerk")},
    )
    assert "JSON" in detail_of(response, 422)
    assert_nothing_written(sessions, payment_id)


async def test_body_that_is_not_an_object_is_422(api, tokens, new_withdrawal, sessions):
    payment_id = new_withdrawal("100.00")
    response = await submit(api, tokens, [body_for(payment_id)])
    detail_of(response, 422)
    assert_nothing_written(sessions, payment_id)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        (["amount", "100.00"], "params"),
        ("amount=100.00", "params"),
        (None, "params"),
    ],
    ids=["list", "string", "null"],
)
async def test_params_not_an_object_is_422(api, tokens, new_withdrawal, sessions, params, field):
    payment_id = new_withdrawal("100.00")
    response = await submit(api, tokens, body_for(payment_id, params=params))
    detail = detail_of(response, 422)
    assert field in detail
    assert_nothing_written(sessions, payment_id)


@pytest.mark.parametrize(
    "amount",
    [[100], ["100.00"], True, False, {"value": "100.00"}],
    ids=["list", "list-of-string", "true", "false", "object"],
)
async def test_amount_of_the_wrong_type_is_422(api, tokens, new_withdrawal, sessions, amount: Any):
    payment_id = new_withdrawal("100.00")
    response = await submit(api, tokens, body_for(payment_id, params={"amount": amount}))
    detail = detail_of(response, 422)
    assert "amount" in detail and "number" in detail
    assert_nothing_written(sessions, payment_id)


@pytest.mark.parametrize(
    ("field", "value"),
    [("action", 5), ("target", ["PAY-1"]), ("reason", {"text": "x"})],
)
async def test_top_level_field_of_the_wrong_type_is_422(
    api, tokens, new_withdrawal, sessions, field: str, value: Any
):
    payment_id = new_withdrawal("100.00")
    response = await submit(api, tokens, body_for(payment_id, **{field: value}))
    assert field in detail_of(response, 422)
    assert_nothing_written(sessions, payment_id)


async def test_unknown_action_is_422(api, tokens, new_withdrawal, sessions):
    payment_id = new_withdrawal("100.00")
    response = await submit(api, tokens, body_for(payment_id, action="payment.teleport"))
    detail = detail_of(response, 422)
    assert "payment.teleport" in detail and "catalogue" in detail
    assert_nothing_written(sessions, payment_id)


async def test_action_the_user_may_not_request_is_403(api, tokens, new_withdrawal, sessions):
    payment_id = new_withdrawal("100.00")
    response = await submit(api, tokens, body_for(payment_id), user="trading.trader")
    assert "payment.withdrawal:request" in detail_of(response, 403)
    assert_nothing_written(sessions, payment_id)


@pytest.mark.parametrize(
    ("amount", "message"),
    [
        ("-100.00", "does not match"),
        ("0", "does not match"),
        ("0.00", "does not match"),
        ("abc", "number"),
        ("NaN", "does not match"),
        ("sNaN", "number"),
        ("Infinity", "does not match"),
        ("100.001", "does not match"),
        ("100.000", "2 decimal"),
        ("99.99", "does not match"),
        (100.5, "does not match"),
        ("1e999999", "does not match"),
    ],
)
async def test_bad_amount_is_422(api, tokens, new_withdrawal, sessions, amount: Any, message: str):
    payment_id = new_withdrawal("100.00")
    response = await submit(api, tokens, body_for(payment_id, params={"amount": amount}))
    detail = detail_of(response, 422)
    assert "amount" in detail and message in detail
    assert_nothing_written(sessions, payment_id)


async def test_nan_as_a_json_number_is_422(api, tokens, new_withdrawal, sessions):
    """Python's JSON parser accepts the non-standard NaN literal; it must not get through."""
    payment_id = new_withdrawal("100.00")
    raw = json.dumps(body_for(payment_id, params={"amount": float("nan")}))
    assert "NaN" in raw
    response = await api.post(
        "/api/v1/requests", content=raw, headers={**JSON, **await tokens.headers("fin.clerk")}
    )
    detail_of(response, 422)
    assert_nothing_written(sessions, payment_id)


async def test_unknown_parameter_is_422(api, tokens, new_withdrawal, sessions):
    payment_id = new_withdrawal("100.00")
    response = await submit(
        api, tokens, body_for(payment_id, params={"amount": "100.00", "fee": "1.00"})
    )
    detail = detail_of(response, 422)
    assert "fee" in detail and "unknown parameter" in detail
    assert_nothing_written(sessions, payment_id)


async def test_unknown_payment_is_422(api, tokens, sessions):
    target = "PAY-DOES-NOT-EXIST"
    response = await submit(api, tokens, body_for(target))
    assert target in detail_of(response, 422)
    assert target_state(sessions, target) == TargetState(0, 0, None)


async def test_a_deposit_is_not_a_withdrawal_target(api, tokens, new_withdrawal, sessions):
    deposit = new_withdrawal("100.00")
    with transaction(sessions) as session:
        payment = session.get(Payment, deposit)
        assert payment is not None
        payment.kind = "deposit"
    response = await submit(api, tokens, body_for(deposit))
    assert "no withdrawal" in detail_of(response, 422)
    assert_nothing_written(sessions, deposit)


async def test_a_paid_withdrawal_cannot_be_requested_again(api, tokens, new_withdrawal, sessions):
    payment_id = new_withdrawal("55.00")
    request = await create_request(api, tokens, payment_id)
    assert (await decide(api, tokens, "fin.manager", request["id"])).status_code == 200
    await wait_for_status(api, tokens, request["id"], "executed")
    before = target_state(sessions, payment_id)
    assert before.payment_status == "paid" and before.requests == 1

    again = await submit(api, tokens, body_for(payment_id))
    detail = detail_of(again, 409)
    assert payment_id in detail and "paid" in detail
    assert target_state(sessions, payment_id) == before


async def test_second_request_for_the_same_payment_is_409(api, tokens, new_withdrawal, sessions):
    payment_id = new_withdrawal("60.00")
    first = await create_request(api, tokens, payment_id)
    before = target_state(sessions, payment_id)

    second = await submit(api, tokens, body_for(payment_id), user="fin.manager")
    detail = detail_of(second, 409)
    assert first["id"] in detail and "pending" in detail
    assert target_state(sessions, payment_id) == before
    assert request_state(sessions, first["id"]).status == "pending"


@pytest.mark.parametrize("reason", [None, "", "   \n\t "], ids=["missing", "empty", "blank"])
async def test_missing_reason_is_422(api, tokens, new_withdrawal, sessions, reason):
    payment_id = new_withdrawal("100.00")
    body = body_for(payment_id)
    if reason is None:
        del body["reason"]
    else:
        body["reason"] = reason
    response = await submit(api, tokens, body)
    assert "reason" in detail_of(response, 422)
    assert_nothing_written(sessions, payment_id)


async def test_reason_too_long_is_422(api, tokens, new_withdrawal, sessions):
    payment_id = new_withdrawal("100.00")
    response = await submit(api, tokens, body_for(payment_id, reason="x" * 2001))
    assert "reason" in detail_of(response, 422)
    assert_nothing_written(sessions, payment_id)


@pytest.mark.parametrize("missing", ["action", "target"])
async def test_missing_action_or_target_is_422(api, tokens, new_withdrawal, sessions, missing: str):
    payment_id = new_withdrawal("100.00")
    body = body_for(payment_id)
    del body[missing]
    response = await submit(api, tokens, body)
    assert missing in detail_of(response, 422)
    assert_nothing_written(sessions, payment_id)


async def test_extra_field_in_request_body_is_422(api, tokens, new_withdrawal, sessions):
    payment_id = new_withdrawal("100.00")
    response = await submit(api, tokens, body_for(payment_id, status="approved"))
    detail = detail_of(response, 422)
    assert "status" in detail and "not permitted" in detail
    assert_nothing_written(sessions, payment_id)


@pytest.mark.parametrize(
    "target", ["{payment}\x00", "{payment}\x1b[2K"], ids=["nul", "escape-sequence"]
)
async def test_control_characters_in_target_are_422(
    api, tokens, new_withdrawal, sessions, target: str
):
    payment_id = new_withdrawal("100.00")
    response = await submit(api, tokens, body_for(target.format(payment=payment_id)))
    detail = detail_of(response, 422)
    assert "target" in detail and "control characters" in detail
    assert_nothing_written(sessions, payment_id)


# --- decisions ------------------------------------------------------------------------


async def test_malformed_json_body_on_decision_is_422(api, tokens, new_withdrawal, sessions):
    request = await create_request(api, tokens, new_withdrawal("100.00"))
    before = request_state(sessions, request["id"])
    response = await api.post(
        f"/api/v1/requests/{request['id']}/decision",
        content='{"decision": "approve", ',
        headers={**JSON, **await tokens.headers("fin.manager")},
    )
    assert "JSON" in detail_of(response, 422)
    assert request_state(sessions, request["id"]) == before


@pytest.mark.parametrize(
    "body",
    [
        {"decision": "maybe"},
        {"decision": "APPROVE"},
        {"decision": ""},
        {"decision": True},
        {},
        {"decision": "approve", "comment": 5},
        {"decision": "approve", "comment": "x" * 2001},
        {"decision": "approve", "step": 1},
    ],
    ids=["maybe", "upper", "empty", "bool", "missing", "comment-int", "comment-long", "extra"],
)
async def test_invalid_decision_body_is_422(api, tokens, new_withdrawal, sessions, body):
    request = await create_request(api, tokens, new_withdrawal("100.00"))
    before = request_state(sessions, request["id"])
    response = await api.post(
        f"/api/v1/requests/{request['id']}/decision",
        json=body,
        headers=await tokens.headers("fin.manager"),
    )
    detail = detail_of(response, 422)
    assert any(word in detail for word in ("decision", "comment", "step"))
    assert request_state(sessions, request["id"]) == before


async def test_unknown_request_is_404(api, tokens, sessions):
    missing = uuid.uuid4()
    got = await api.get(f"/api/v1/requests/{missing}", headers=await tokens.headers("fin.clerk"))
    assert detail_of(got, 404) == "request not found"
    decided = await decide(api, tokens, "fin.manager", str(missing))
    assert detail_of(decided, 404) == "request not found"
    cancelled = await api.post(
        f"/api/v1/requests/{missing}/cancel",
        json={"reason": "x"},
        headers=await tokens.headers("fin.clerk"),
    )
    assert detail_of(cancelled, 404) == "request not found"
    with sessions() as session:
        assert session.get(ApprovalRequest, missing) is None
        assert not session.execute(
            select(func.count())
            .select_from(AuditEvent)
            .where(AuditEvent.stream == f"request:{missing}")
        ).scalar_one()


@pytest.mark.parametrize("bad_id", ["not-a-uuid", "123", "00000000-0000-0000-0000-00000000000g"])
async def test_malformed_uuid_in_path_is_422(api, tokens, bad_id: str):
    got = await api.get(f"/api/v1/requests/{bad_id}", headers=await tokens.headers("fin.clerk"))
    assert "request_id" in detail_of(got, 422)
    decided = await decide(api, tokens, "fin.manager", bad_id)
    assert "request_id" in detail_of(decided, 422)


async def test_approving_twice_is_409(api, tokens, new_withdrawal, sessions):
    request = await create_request(api, tokens, new_withdrawal("10000.00"))
    first = await decide(api, tokens, "fin.manager", request["id"])
    assert first.status_code == 200, first.text
    assert first.json()["current_step"] == 1
    before = request_state(sessions, request["id"])

    again = await decide(api, tokens, "fin.manager", request["id"])
    assert "already decided" in detail_of(again, 409)
    assert request_state(sessions, request["id"]) == before


async def test_approving_ones_own_request_is_403(api, tokens, new_withdrawal, sessions):
    request = await create_request(api, tokens, new_withdrawal("100.00"), user="fin.manager")
    assert request["requester"] == "fin.manager"
    before = request_state(sessions, request["id"])

    response = await decide(api, tokens, "fin.manager", request["id"])
    assert "own request" in detail_of(response, 403)
    rejected = await decide(api, tokens, "fin.manager", request["id"], "reject")
    assert "own request" in detail_of(rejected, 403)
    assert request_state(sessions, request["id"]) == before


async def test_user_without_the_approve_permission_is_403(api, tokens, new_withdrawal, sessions):
    """fin.clerk sees his own request but may not approve withdrawals at all."""
    request = await create_request(api, tokens, new_withdrawal("100.00"))
    before = request_state(sessions, request["id"])
    response = await decide(api, tokens, "fin.clerk", request["id"])
    assert "payment.withdrawal:approve" in detail_of(response, 403)
    assert request_state(sessions, request["id"]) == before

    # A request he cannot see stays hidden: 404, not 403.
    other = await create_request(api, tokens, new_withdrawal("100.00"), user="fin.manager")
    hidden = await decide(api, tokens, "fin.clerk", other["id"])
    assert detail_of(hidden, 404) == "request not found"
    assert request_state(sessions, other["id"]).decisions == 0


async def test_permission_without_the_steps_role_is_403(api, tokens, new_withdrawal, sessions):
    request = await create_request(api, tokens, new_withdrawal("10000.00"))
    assert (await decide(api, tokens, "fin.manager", request["id"])).status_code == 200
    before = request_state(sessions, request["id"])
    assert before.current_step == 1 and before.status == "pending"

    response = await decide(api, tokens, "fin.manager2", request["id"])
    detail = detail_of(response, 403)
    assert "Finance director approval" in detail and "finance.director" in detail
    assert request_state(sessions, request["id"]) == before


async def test_deciding_after_completion_is_409(api, tokens, new_withdrawal, sessions):
    request = await create_request(api, tokens, new_withdrawal("100.00"))
    assert (await decide(api, tokens, "fin.manager", request["id"])).status_code == 200
    await wait_for_status(api, tokens, request["id"], "executed")
    before = request_state(sessions, request["id"])

    for decision in ("approve", "reject"):
        late = await decide(api, tokens, "fin.manager2", request["id"], decision)
        assert "executed" in detail_of(late, 409)
    assert request_state(sessions, request["id"]) == before
    assert before.payment_status == "paid"


async def test_deciding_a_rejected_request_is_409(api, tokens, new_withdrawal, sessions):
    request = await create_request(api, tokens, new_withdrawal("100.00"))
    rejected = await decide(api, tokens, "fin.manager", request["id"], "reject")
    assert rejected.status_code == 200
    before = request_state(sessions, request["id"])
    late = await decide(api, tokens, "fin.manager2", request["id"])
    assert "rejected" in detail_of(late, 409)
    assert request_state(sessions, request["id"]) == before
    assert before.payment_status == "pending"


async def test_request_invisible_to_an_outsider_is_404_not_403(
    api, tokens, new_withdrawal, sessions
):
    request = await create_request(api, tokens, new_withdrawal("100.00"))
    before = request_state(sessions, request["id"])
    got = await api.get(
        f"/api/v1/requests/{request['id']}", headers=await tokens.headers("trading.trader")
    )
    assert detail_of(got, 404) == "request not found"
    decided = await decide(api, tokens, "trading.trader", request["id"])
    assert detail_of(decided, 404) == "request not found"
    cancelled = await api.post(
        f"/api/v1/requests/{request['id']}/cancel",
        json={"reason": "mine now"},
        headers=await tokens.headers("trading.trader"),
    )
    assert detail_of(cancelled, 404) == "request not found"
    assert request_state(sessions, request["id"]) == before


# --- lists ----------------------------------------------------------------------------


async def test_invalid_status_filter_is_422(api, tokens):
    response = await api.get(
        "/api/v1/requests?status=bogus", headers=await tokens.headers("fin.clerk")
    )
    detail = detail_of(response, 422)
    assert "status must be one of" in detail and "pending" in detail


async def test_invalid_scope_is_422(api, tokens):
    response = await api.get(
        "/api/v1/requests?scope=everyone", headers=await tokens.headers("fin.clerk")
    )
    assert "scope" in detail_of(response, 422)


@pytest.mark.parametrize("limit", ["0", "-1", "201", "ten"])
async def test_invalid_limit_is_422(api, tokens, limit: str):
    headers = await tokens.headers("fin.clerk")
    for path in ("/api/v1/requests", "/api/v1/tasks"):
        response = await api.get(f"{path}?limit={limit}", headers=headers)
        assert "limit" in detail_of(response, 422)


@pytest.mark.parametrize(
    "cursor",
    [
        "not-a-cursor",
        "!!!",
        cursor_of([1, 2]),
        cursor_of({"created_at": "yesterday", "id": str(uuid.uuid4())}),
        cursor_of({"created_at": "2026-01-01T00:00:00+00:00", "id": "not-a-uuid"}),
        cursor_of({"created_at": 5, "id": str(uuid.uuid4())}),
        cursor_of({"created_at": "2026-01-01T00:00:00+00:00"}),
    ],
    ids=["text", "punctuation", "list", "bad-date", "bad-id", "int-date", "missing-key"],
)
async def test_invalid_request_cursor_is_400(api, tokens, cursor: str):
    response = await api.get(
        f"/api/v1/requests?cursor={cursor}", headers=await tokens.headers("fin.clerk")
    )
    assert detail_of(response, 400, 422) == "invalid cursor"


async def test_request_cursor_with_a_numeric_id_is_400(api, tokens):
    cursor = cursor_of({"created_at": "2026-01-01T00:00:00+00:00", "id": 12345})
    response = await api.get(
        f"/api/v1/requests?cursor={cursor}", headers=await tokens.headers("fin.clerk")
    )
    assert detail_of(response, 400, 422) == "invalid cursor"


@pytest.mark.parametrize(
    "cursor",
    [
        "garbage",
        cursor_of({"due_at": "soon", "id": 1}),
        cursor_of({"due_at": "2026-01-01T00:00:00+00:00", "id": "x"}),
        cursor_of({"due_at": "2026-01-01T00:00:00+00:00", "id": [1]}),
    ],
    ids=["text", "bad-date", "bad-id", "list-id"],
)
async def test_invalid_task_cursor_is_400(api, tokens, cursor: str):
    response = await api.get(
        f"/api/v1/tasks?cursor={cursor}", headers=await tokens.headers("fin.manager")
    )
    assert detail_of(response, 400, 422) == "invalid cursor"


@pytest.mark.parametrize("cursor", ["abc", "-1", "1.5", "1" * 20])
async def test_invalid_audit_cursor_is_422(api, tokens, cursor: str):
    response = await api.get(
        f"/api/v1/audit?cursor={cursor}", headers=await tokens.headers("comp.officer")
    )
    assert "cursor" in detail_of(response, 400, 422)


async def test_audit_cursor_beyond_bigint_is_4xx(api, tokens):
    response = await api.get(
        "/api/v1/audit?cursor=9999999999999999999", headers=await tokens.headers("comp.officer")
    )
    assert "cursor" in detail_of(response, 400, 422)


@pytest.mark.parametrize("param", ["since", "until"])
async def test_audit_time_without_timezone_is_422(api, tokens, param: str):
    response = await api.get(
        f"/api/v1/audit?{param}=2026-01-01T10:00:00", headers=await tokens.headers("comp.officer")
    )
    detail = detail_of(response, 422)
    assert param in detail and "timezone" in detail


async def test_audit_since_after_until_is_422(api, tokens):
    response = await api.get(
        "/api/v1/audit?since=2026-02-01T00:00:00Z&until=2026-01-01T00:00:00Z",
        headers=await tokens.headers("comp.officer"),
    )
    assert "since must be before until" in detail_of(response, 422)


async def test_audit_time_that_is_not_a_time_is_422(api, tokens):
    response = await api.get(
        "/api/v1/audit?since=last-tuesday", headers=await tokens.headers("comp.officer")
    )
    assert "since" in detail_of(response, 422)


async def test_invalid_payment_filters_are_422(api, tokens):
    headers = await tokens.headers("fin.clerk")
    status = await api.get("/api/v1/payments?status=lost", headers=headers)
    assert "status must be one of" in detail_of(status, 422)
    kind = await api.get("/api/v1/payments?kind=bonus", headers=headers)
    assert "kind must be one of" in detail_of(kind, 422)


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/payments?cursor=%00",
        "/api/v1/requests?action=%00",
        "/api/v1/audit?stream=request%3A%00",
        f"/api/v1/requests/{uuid.uuid4()}%00",
    ],
    ids=["payments-cursor", "requests-action", "audit-stream", "path"],
)
async def test_nul_byte_in_the_url_is_400(api, tokens, path: str):
    response = await api.get(path, headers=await tokens.headers("admin"))
    assert "NUL" in detail_of(response, 400)


# --- text that PostgreSQL cannot store ------------------------------------------------


@pytest.fixture
async def new_workflows(temporal_client: Client) -> AsyncIterator[Callable[[], Awaitable[list]]]:
    """Approval workflows started during the test and still running; terminated afterwards.

    Text PostgreSQL refuses, once inside a workflow, makes its recording activity fail
    forever; such a workflow would also hold up the worker's shutdown at the end of the run.
    """
    since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    query = (
        "WorkflowType = 'ApprovalWorkflow' AND ExecutionStatus = 'Running' "
        f"AND StartTime >= '{since}'"
    )

    async def running() -> list:
        return [execution async for execution in temporal_client.list_workflows(query)]

    yield running
    for execution in await running():
        handle = temporal_client.get_workflow_handle(execution.id, run_id=execution.run_id)
        await handle.terminate("test cleanup: wedged by bad input")


@pytest.mark.parametrize("reason", ["player\x00asked", "player\x07asked"], ids=["nul", "bell"])
async def test_control_characters_in_reason_are_422(
    api, tokens, new_withdrawal, sessions, new_workflows, reason: str
):
    payment_id = new_withdrawal("100.00")
    response = await submit(api, tokens, body_for(payment_id, reason=reason))
    detail = detail_of(response, 422)
    assert "reason" in detail and "control characters" in detail
    assert_nothing_written(sessions, payment_id)
    assert await new_workflows() == []


async def test_nul_byte_in_comment_is_422(api, tokens, new_withdrawal, sessions, new_workflows):
    request = await create_request(api, tokens, new_withdrawal("100.00"))
    before = request_state(sessions, request["id"])
    response = await api.post(
        f"/api/v1/requests/{request['id']}/decision",
        json={"decision": "approve", "comment": "ok\x00"},
        headers=await tokens.headers("fin.manager"),
    )
    detail = detail_of(response, 422)
    assert "comment" in detail and "control characters" in detail
    assert request_state(sessions, request["id"]) == before
    # The request's own workflow is the only one started, and it is still running.
    assert [w.id for w in await new_workflows()] == [f"approval-{request['id']}"]


async def test_approval_service_not_answering_is_503_not_500(
    runtime, worker, tokens, new_withdrawal, sessions, monkeypatch, new_workflows
):
    """No worker polls the task queue: the API must answer with its 503, not crash."""
    monkeypatch.setattr(request_service, "WORKFLOW_ANSWER_TIMEOUT", 1.0)
    deaf = dataclasses.replace(runtime, task_queue=f"nobody-listens-{uuid.uuid4()}")
    payment_id = new_withdrawal("100.00")
    transport = httpx.ASGITransport(app=create_app(deaf))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.post(
            "/api/v1/requests",
            json=body_for(payment_id),
            headers=await tokens.headers("fin.clerk"),
        )
    assert "did not answer" in detail_of(response, 503)
    assert_nothing_written(sessions, payment_id)

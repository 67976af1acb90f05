"""Just-in-time elevation end to end through the API, on the real worker and database.

Request → the policy's chain approves → the role counts from the approval → the durable
timer ends it; renewal and early revocation; an expired grant counts for nothing even
while its timer is late; every refusal writes nothing.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update
from temporalio.worker import Replayer

from activities import jit as jit_activities
from activities.jit import jit_workflow_id
from core.db import transaction
from core.models import ApprovalRequest, AuditEvent, JitGrant, User
from tests.conftest import Tokens, csrf_of, sign_in_and_open
from workflows.approval import ApprovalWorkflow
from workflows.jit import JitAccessWorkflow

# In these tests one "hour" of an elevation lasts this many seconds.
HOUR_SECONDS = 3


@pytest.fixture(autouse=True)
def short_hours(monkeypatch):
    monkeypatch.setattr(jit_activities, "SECONDS_PER_HOUR", HOUR_SECONDS)


@pytest.fixture
def people(make_user) -> dict[str, str]:
    """A risk analyst who asks, two compliance approvers, and a trader with no say."""
    return {
        "asker": make_user(("risk.analyst",), "risk-fraud", "risk"),
        "officer": make_user(("compliance.officer",), "compliance", "compliance"),
        "lead": make_user(("compliance.lead",), "compliance", "compliance"),
        "stranger": make_user(("trading.trader",), "trading-desk", "trading"),
    }


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "timed out waiting"
        await asyncio.sleep(0.2)


async def ask(
    api: httpx.AsyncClient, tokens: Tokens, who: str, role: str, hours: Any = 1
) -> httpx.Response:
    return await api.post(
        "/api/v1/jit",
        json={"role": role, "duration_hours": hours, "reason": "cover for the lead"},
        headers=await tokens.headers(who),
    )


async def approve(api: httpx.AsyncClient, tokens: Tokens, who: str, request_id: str) -> dict:
    response = await api.post(
        f"/api/v1/requests/{request_id}/decision",
        json={"decision": "approve", "comment": "ok"},
        headers=await tokens.headers(who),
    )
    assert response.status_code == 200, response.text
    return response.json()


async def elevation(api: httpx.AsyncClient, tokens: Tokens, who: str, grant_id: str) -> dict:
    response = await api.get(f"/api/v1/jit/{grant_id}", headers=await tokens.headers(who))
    assert response.status_code == 200, response.text
    return response.json()


async def active(api: httpx.AsyncClient, tokens: Tokens, who: str, grant_id: str) -> dict:
    """The elevation once its approved request has granted it."""

    async def granted() -> bool:
        return (await elevation(api, tokens, who, grant_id))["status"] == "active"

    await eventually(granted)
    return await elevation(api, tokens, who, grant_id)


async def request_status(api: httpx.AsyncClient, tokens: Tokens, who: str, request_id: str) -> dict:
    """The request once it has closed (executed, failed, rejected...)."""

    async def closed() -> bool:
        response = await api.get(
            f"/api/v1/requests/{request_id}", headers=await tokens.headers(who)
        )
        return response.json()["status"] not in ("pending", "approved")

    await eventually(closed)
    response = await api.get(f"/api/v1/requests/{request_id}", headers=await tokens.headers(who))
    return response.json()


async def roles_of(api: httpx.AsyncClient, tokens: Tokens, who: str) -> list[str]:
    me = await api.get("/api/v1/me", headers=await tokens.headers(who))
    return me.json()["roles"]


def grant_events(sessions, grant_id: str) -> list[str]:
    with sessions() as session:
        return list(
            session.execute(
                select(AuditEvent.action)
                .where(AuditEvent.stream == f"jit:{grant_id}")
                .order_by(AuditEvent.seq)
            ).scalars()
        )


def written(sessions) -> tuple[int, int, int]:
    """Grants, elevation requests and elevation audit events stored so far."""
    with sessions() as session:
        grants = session.execute(select(func.count()).select_from(JitGrant)).scalar_one()
        requests = session.execute(
            select(func.count())
            .select_from(ApprovalRequest)
            .where(ApprovalRequest.action == "access.elevation")
        ).scalar_one()
        events = session.execute(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.stream.like("jit:%"))
        ).scalar_one()
    return grants, requests, events


async def granted(api, tokens, people, role: str, hours: int = 1) -> dict:
    """Ask for `role` as the asker and have the chain approve it; returns the elevation."""
    asked = await ask(api, tokens, people["asker"], role, hours)
    assert asked.status_code == 201, asked.text
    body = asked.json()
    request_id = body["request_ids"][0]
    state = await approve(api, tokens, people["officer"], request_id)
    if state["status"] == "pending":  # the sensitive tier: the head of compliance too
        state = await approve(api, tokens, people["lead"], request_id)
    assert state["status"] == "approved", state
    return await active(api, tokens, people["asker"], body["id"])


async def test_an_approved_elevation_works_from_approval_until_it_expires(
    api, tokens, sessions, people
):
    asker = people["asker"]
    refused = await api.get("/api/v1/roles", headers=await tokens.headers(asker))
    assert refused.status_code == 403

    asked = await ask(api, tokens, asker, "compliance.auditor", 2)
    assert asked.status_code == 201, asked.text
    body = asked.json()
    assert body["status"] == "pending" and body["granted_at"] is None
    request = (
        await api.get(
            f"/api/v1/requests/{body['request_ids'][0]}", headers=await tokens.headers(asker)
        )
    ).json()
    assert request["action"] == "access.elevation" and request["target"] == asker
    assert [s["name"] for s in request["steps"]] == [
        "Compliance approval",
        "Head of compliance approval",
    ]
    # Nothing counts while the chain decides.
    assert "compliance.auditor" not in await roles_of(api, tokens, asker)

    await approve(api, tokens, people["officer"], body["request_ids"][0])
    assert "compliance.auditor" not in await roles_of(api, tokens, asker)
    approved_at = datetime.now(UTC)
    await approve(api, tokens, people["lead"], body["request_ids"][0])
    grant = await active(api, tokens, asker, body["id"])
    granted_at = datetime.fromisoformat(grant["granted_at"])
    assert granted_at >= approved_at - timedelta(seconds=1)  # the clock starts at approval
    assert datetime.fromisoformat(grant["expires_at"]) - granted_at == timedelta(
        seconds=2 * HOUR_SECONDS
    )
    allowed = await api.get("/api/v1/roles", headers=await tokens.headers(asker))
    assert allowed.status_code == 200, allowed.text

    async def expired() -> bool:
        return (await elevation(api, tokens, asker, body["id"]))["status"] == "expired"

    await eventually(expired)
    again = await api.get("/api/v1/roles", headers=await tokens.headers(asker))
    assert again.status_code == 403
    assert "compliance.auditor" not in await roles_of(api, tokens, asker)

    async def recorded() -> bool:
        return grant_events(sessions, body["id"])[-1:] == ["jit.expired"]

    await eventually(recorded)
    assert grant_events(sessions, body["id"]) == ["jit.requested", "jit.granted", "jit.expired"]
    history = (await api.get("/api/v1/jit", headers=await tokens.headers(asker))).json()
    assert [(g["id"], g["status"]) for g in history["items"]] == [(body["id"], "expired")]


async def test_an_expired_grant_is_refused_even_while_its_timer_is_late(
    api, tokens, sessions, people
):
    asker = people["asker"]
    grant = await granted(api, tokens, people, "compliance.auditor", hours=72)
    assert (await api.get("/api/v1/roles", headers=await tokens.headers(asker))).status_code == 200
    # The revoking timer is hours away; the grant's end has passed in the database.
    with transaction(sessions) as session:
        session.execute(
            update(JitGrant)
            .where(JitGrant.id == grant["id"])
            .values(
                granted_at=datetime.now(UTC) - timedelta(hours=2),
                expires_at=datetime.now(UTC) - timedelta(seconds=1),
            )
        )
    refused = await api.get("/api/v1/roles", headers=await tokens.headers(asker))
    assert refused.status_code == 403
    assert "roles:view" in refused.json()["detail"]
    listed = await elevation(api, tokens, asker, grant["id"])
    assert listed["status"] == "expired" and listed["seconds_left"] == 0
    renew = await api.post(
        f"/api/v1/jit/{grant['id']}/renew",
        json={"duration_hours": 1, "reason": "more"},
        headers=await tokens.headers(asker),
    )
    assert renew.status_code == 409, renew.text


async def test_a_renewal_approved_again_extends_the_grant(api, tokens, sessions, people):
    asker = people["asker"]
    grant = await granted(api, tokens, people, "risk.aml_investigator", hours=3)
    first_expiry = datetime.fromisoformat(grant["expires_at"])
    renewed = await api.post(
        f"/api/v1/jit/{grant['id']}/renew",
        json={"duration_hours": 10, "reason": "the case is not closed"},
        headers=await tokens.headers(asker),
    )
    assert renewed.status_code == 200, renewed.text
    renewal_request = renewed.json()["pending_request_id"]
    assert renewal_request is not None and renewal_request != grant["request_ids"][0]
    assert datetime.fromisoformat(renewed.json()["expires_at"]) == first_expiry

    await approve(api, tokens, people["officer"], renewal_request)
    assert (await request_status(api, tokens, asker, renewal_request))["status"] == "executed"
    after = await elevation(api, tokens, asker, grant["id"])
    assert datetime.fromisoformat(after["expires_at"]) > first_expiry + timedelta(
        seconds=5 * HOUR_SECONDS
    )
    assert after["request_ids"] == [grant["request_ids"][0], renewal_request]
    assert after["pending_request_id"] is None
    assert "risk.aml_investigator" in await roles_of(api, tokens, asker)
    assert grant_events(sessions, grant["id"]) == [
        "jit.requested",
        "jit.granted",
        "jit.renewal_requested",
        "jit.renewed",
    ]
    # Past the first expiry, the renewed grant still counts (the timer moved).
    await asyncio.sleep((first_expiry - datetime.now(UTC)).total_seconds() + 1)
    assert (await elevation(api, tokens, asker, grant["id"]))["status"] == "active"
    assert "risk.aml_investigator" in await roles_of(api, tokens, asker)
    revoked = await api.post(
        f"/api/v1/jit/{grant['id']}/revoke", json={}, headers=await tokens.headers(asker)
    )
    assert revoked.status_code == 200, revoked.text


async def test_the_holder_or_a_manager_revokes_early_and_nobody_else(
    api, tokens, sessions, people, temporal_client
):
    asker, stranger = people["asker"], people["stranger"]
    grant = await granted(api, tokens, people, "risk.aml_investigator", hours=72)
    before = written(sessions)
    refused = await api.post(
        f"/api/v1/jit/{grant['id']}/revoke",
        json={"reason": "mine now"},
        headers=await tokens.headers(stranger),
    )
    assert refused.status_code == 404, refused.text
    assert written(sessions) == before
    assert "risk.aml_investigator" in await roles_of(api, tokens, asker)

    # Holders of jit:manage see every elevation in force and end any of them.
    others = await api.get("/api/v1/jit?everyone=true", headers=await tokens.headers(stranger))
    assert others.status_code == 403
    active = await api.get("/api/v1/jit?everyone=true", headers=await tokens.headers("admin"))
    assert grant["id"] in [g["id"] for g in active.json()["items"]]
    revoked = await api.post(
        f"/api/v1/jit/{grant['id']}/revoke",
        json={"reason": "case closed"},
        headers=await tokens.headers("admin"),
    )
    assert revoked.status_code == 200, revoked.text
    body = revoked.json()
    assert body["status"] == "revoked" and body["revoked_by"] == "admin"
    assert "risk.aml_investigator" not in await roles_of(api, tokens, asker)
    assert grant_events(sessions, grant["id"])[-1] == "jit.revoked"
    active = await api.get("/api/v1/jit?everyone=true", headers=await tokens.headers("admin"))
    assert grant["id"] not in [g["id"] for g in active.json()["items"]]
    # The finished workflow's history replays on the current code (determinism).
    handle = temporal_client.get_workflow_handle(jit_workflow_id(grant["id"]))
    await handle.result()
    replayed = await Replayer(workflows=[JitAccessWorkflow, ApprovalWorkflow]).replay_workflow(
        await handle.fetch_history(), raise_on_replay_failure=False
    )
    assert replayed.replay_failure is None, replayed.replay_failure
    again = await api.post(
        f"/api/v1/jit/{grant['id']}/revoke", json={}, headers=await tokens.headers(asker)
    )
    assert again.status_code == 409, again.text


async def test_a_rejected_elevation_grants_nothing(api, tokens, sessions, people):
    asker = people["asker"]
    asked = await ask(api, tokens, asker, "risk.aml_investigator")
    assert asked.status_code == 201, asked.text
    grant = asked.json()
    rejected = await api.post(
        f"/api/v1/requests/{grant['request_ids'][0]}/decision",
        json={"decision": "reject", "comment": "no"},
        headers=await tokens.headers(people["officer"]),
    )
    assert rejected.status_code == 200, rejected.text

    async def closed() -> bool:
        return (await elevation(api, tokens, asker, grant["id"]))["status"] == "not_granted"

    await eventually(closed)
    assert "risk.aml_investigator" not in await roles_of(api, tokens, asker)
    # Asking again is allowed once the first one closed.
    again = await ask(api, tokens, asker, "risk.aml_investigator")
    assert again.status_code == 201, again.text


@pytest.mark.parametrize(
    ("who", "body", "status", "says"),
    [
        ("asker", {"role": "platform.admin", "duration_hours": 1}, 422, "role must be one of"),
        ("asker", {"role": "no.such.role", "duration_hours": 1}, 422, "role must be one of"),
        ("asker", {"role": "risk.lead", "duration_hours": 0}, 422, "between 1 and 72"),
        ("asker", {"role": "risk.lead", "duration_hours": 73}, 422, "between 1 and 72"),
        ("asker", {"role": "risk.lead", "duration_hours": "soon"}, 422, ""),
        ("asker", {"role": "risk.lead", "duration_hours": 1, "reason": "  "}, 422, "reason"),
        ("officer", {"role": "compliance.officer", "duration_hours": 1}, 403, "access.elevation"),
    ],
)
async def test_bad_elevation_requests_are_refused_and_write_nothing(
    api, tokens, sessions, people, who, body, status, says
):
    before = written(sessions)
    response = await api.post(
        "/api/v1/jit",
        json={"reason": "because", **body},
        headers=await tokens.headers(people[who]),
    )
    assert response.status_code == status, response.text
    assert says in str(response.json()["detail"])
    assert written(sessions) == before


async def test_asking_for_a_role_one_holds_or_has_asked_for_is_refused(
    api, tokens, sessions, make_user, people
):
    aml = make_user(("risk.aml_investigator", "risk.analyst"), "risk-aml", "risk")
    before = written(sessions)
    held = await ask(api, tokens, aml, "risk.aml_investigator")
    assert held.status_code == 409 and "already hold" in held.json()["detail"]
    assert written(sessions) == before

    first = await ask(api, tokens, people["asker"], "risk.aml_investigator")
    assert first.status_code == 201, first.text
    before = written(sessions)
    twice = await ask(api, tokens, people["asker"], "risk.aml_investigator")
    assert twice.status_code == 409 and "already asked" in twice.json()["detail"]
    assert written(sessions) == before


async def test_an_elevation_cannot_be_asked_through_the_generic_request_form(
    api, tokens, sessions, people
):
    asker = people["asker"]
    asked = await api.post(
        "/api/v1/requests",
        json={
            "action": "access.elevation",
            "target": asker,
            "params": {"role": "risk.aml_investigator", "duration_hours": 1},
            "reason": "sneaky",
        },
        headers=await tokens.headers(asker),
    )
    assert asked.status_code == 422, asked.text
    assert "My access" in asked.json()["detail"]
    with sessions() as session:
        made = session.execute(
            select(func.count())
            .select_from(ApprovalRequest)
            .where(ApprovalRequest.action == "access.elevation", ApprovalRequest.target == asker)
        ).scalar_one()
    assert made == 0
    assert "risk.aml_investigator" not in await roles_of(api, tokens, asker)


# --- the web page -------------------------------------------------------------------


async def open_my_access(web: httpx.AsyncClient, username: str) -> str:
    """Sign in through the login form; returns the CSRF token of the My access page."""
    page = await sign_in_and_open(web, username, "/jit")
    assert page.status_code == 200
    assert 'href="/jit" aria-current="page"' in page.text
    return csrf_of(page)


async def test_my_access_asks_shows_the_time_left_and_ends_an_elevation(
    web, api, tokens, sessions, people
):
    asker = people["asker"]
    csrf = await open_my_access(web, asker)
    before = written(sessions)
    too_long = await web.post(
        "/jit",
        data={
            "csrf_token": csrf,
            "role": "risk.aml_investigator",
            "duration_hours": "100",
            "reason": "cover",
        },
    )
    assert too_long.status_code == 422
    assert "between 1 and 72" in too_long.text and 'aria-invalid="true"' in too_long.text
    assert written(sessions) == before

    asked = await web.post(
        "/jit",
        data={
            "csrf_token": csrf,
            "role": "risk.aml_investigator",
            "duration_hours": "72",
            "reason": "cover",
        },
    )
    assert asked.status_code == 200, asked.text
    assert "Awaiting approval" in asked.text and "Pending" in asked.text
    with sessions() as session:
        grant = session.execute(
            select(JitGrant).join(User, User.id == JitGrant.user_id).where(User.username == asker)
        ).scalar_one()
    await approve(api, tokens, people["officer"], str(grant.request_ids[0]))
    await active(api, tokens, asker, str(grant.id))

    page = await web.get("/jit")
    # 72 test hours of 3 seconds: a countdown in minutes and seconds, in words.
    assert re.search(r'Active</span>\s*<span class="countdown"[^>]*>3m \d\ds left', page.text)
    fragment = await web.get("/jit", headers={"HX-Request": "true"})
    assert fragment.text.lstrip().startswith('<section id="grants"')

    ended = await web.post(f"/jit/{grant.id}/revoke", data={"csrf_token": csrf})
    assert ended.status_code == 200
    assert "Revoked</span>" in ended.text and f"by {asker}" in ended.text
    unknown = await web.post("/jit/not-a-grant/revoke", data={"csrf_token": csrf})
    assert unknown.status_code == 404 and "elevation not found" in unknown.text


async def test_the_admin_sees_every_active_elevation_on_the_page(web, api, tokens, people):
    grant = await granted(api, tokens, people, "risk.aml_investigator", hours=72)
    await open_my_access(web, "admin")
    page = await web.get("/jit")
    assert "Every active elevation" in page.text
    assert f'id="grant-{grant["id"]}"' in page.text and people["asker"] in page.text

"""The audit trail narrowed by data scope: a regulator for one market reads the events of
that market's requests and nothing about another market's players, through the API and the
Compliance workspace; paging still shows each visible event once; chains still verify."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from core import audit
from core.db import SessionFactory, transaction
from core.models import ApprovalRequest, AuditEvent
from policies.engine import PolicyEngine
from tests.api.test_scope_enforcement import insert_withdrawal, submit
from tests.conftest import AUDIT_KEY, Tokens, sign_in_and_open


@dataclass(frozen=True)
class Trail:
    uk_request: str
    se_request: str
    person_stream: str  # a stream about a person, no player's
    started: datetime


@pytest.fixture
async def trail(api, tokens, sessions, make_user) -> Trail:
    """A pending withdrawal in the UK and one in Sweden, and an event about a person."""
    started = datetime.now(UTC) - timedelta(seconds=1)
    uk_clerk = make_user(("finance.payments_clerk_uk",), "fin-payouts-uk", "finance")
    se_clerk = make_user(("finance.payments_clerk_nordics",), "fin-payouts", "finance")
    uk = await submit(api, tokens, uk_clerk, insert_withdrawal(sessions, "UK"))
    se = await submit(api, tokens, se_clerk, insert_withdrawal(sessions, "SE"))
    assert uk.status_code == 201 and se.status_code == 201, (uk.text, se.text)
    person_stream = f"user:{se_clerk}"
    with transaction(sessions) as session:
        audit.append(
            session,
            audit.NewAuditEvent(
                event_id=uuid.uuid4(),
                stream=person_stream,
                action="user.password_changed",
                target=person_stream,
                actor=se_clerk,
            ),
        )
    return Trail(uk.json()["id"], se.json()["id"], person_stream, started)


async def audit_page(
    api: httpx.AsyncClient, headers: dict[str, str], **params: str
) -> list[dict[str, Any]]:
    response = await api.get("/api/v1/audit", params=params, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["items"]


async def every_event(
    api: httpx.AsyncClient, headers: dict[str, str], limit: int, **params: str
) -> list[dict[str, Any]]:
    """Follow `next` to the end, `limit` events a page."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        query = {"limit": str(limit), **params, **({"cursor": cursor} if cursor else {})}
        response = await api.get("/api/v1/audit", params=query, headers=headers)
        assert response.status_code == 200, response.text
        items += response.json()["items"]
        cursor = response.json()["next"]
        if cursor is None:
            return items


def request_regions(sessions: SessionFactory, streams: set[str]) -> set[str | None]:
    ids = [uuid.UUID(s.removeprefix("request:")) for s in streams]
    with sessions() as session:
        return set(
            session.execute(
                select(ApprovalRequest.region).where(ApprovalRequest.id.in_(ids))
            ).scalars()
        )


async def test_a_regional_regulator_reads_only_their_regions_request_streams(
    api, tokens: Tokens, trail: Trail, make_user
):
    se_regulator = make_user(("compliance.regulatory_se",), "compliance", "compliance")
    uk_regulator = make_user(("compliance.regulatory_uk",), "compliance", "compliance")
    se_headers = await tokens.headers(se_regulator)
    uk_headers = await tokens.headers(uk_regulator)

    se_own = await audit_page(api, se_headers, stream=f"request:{trail.se_request}")
    se_foreign = await audit_page(api, se_headers, stream=f"request:{trail.uk_request}")
    uk_own = await audit_page(api, uk_headers, stream=f"request:{trail.uk_request}")
    uk_foreign = await audit_page(api, uk_headers, stream=f"request:{trail.se_request}")

    assert "request.submitted" in [e["action"] for e in se_own]
    assert "request.submitted" in [e["action"] for e in uk_own]
    assert se_foreign == [] and uk_foreign == []
    assert await audit_page(api, se_headers, stream=trail.person_stream) == []


async def test_the_unfiltered_listing_hides_other_regions_and_people(
    api, tokens: Tokens, sessions, trail: Trail, make_user
):
    se_regulator = make_user(("compliance.regulatory_se",), "compliance", "compliance")
    headers = await tokens.headers(se_regulator)

    events = await every_event(api, headers, limit=500)
    streams = {e["stream"] for e in events}

    assert f"request:{trail.se_request}" in streams
    assert f"request:{trail.uk_request}" not in streams
    assert all(stream.startswith("request:") for stream in streams)
    # Requests about no player (a role change, say) stay visible, as in lists of requests.
    assert request_regions(sessions, streams) <= {"SE", None}


async def test_paging_a_narrowed_listing_shows_each_visible_event_once(
    api, tokens: Tokens, trail: Trail, make_user
):
    se_regulator = make_user(("compliance.regulatory_se",), "compliance", "compliance")
    headers = await tokens.headers(se_regulator)

    for window in ({}, {"since": trail.started.isoformat()}):
        whole = await every_event(api, headers, limit=500, **window)
        paged = await every_event(api, headers, limit=2, **window)
        ids = [e["event_id"] for e in paged]
        assert len(whole) >= 2, window
        assert ids == [e["event_id"] for e in whole], window
        assert len(set(ids)) == len(ids), window


async def test_an_unscoped_viewer_sees_every_stream(api, tokens: Tokens, trail: Trail, make_user):
    auditor = make_user(("compliance.auditor",), "compliance", "compliance")
    headers = await tokens.headers(auditor)

    events = await every_event(api, headers, limit=3, since=trail.started.isoformat())
    streams = {e["stream"] for e in events}

    assert {
        f"request:{trail.uk_request}",
        f"request:{trail.se_request}",
        trail.person_stream,
    } <= streams


async def test_the_derived_request_id_leaves_every_chain_verifying(sessions, trail: Trail):
    with sessions() as session:
        derived = dict(
            session.execute(
                select(AuditEvent.stream, AuditEvent.request_id).where(
                    AuditEvent.stream.in_([f"request:{trail.uk_request}", trail.person_stream])
                )
            ).all()
        )
        report = audit.verify(session, AUDIT_KEY)

    assert derived == {
        f"request:{trail.uk_request}": uuid.UUID(trail.uk_request),
        trail.person_stream: None,
    }
    assert report.ok, [str(p) for p in report.problems]


async def test_the_compliance_audit_page_is_narrowed_too(
    web: httpx.AsyncClient, trail: Trail, make_user
):
    se_regulator = make_user(("compliance.regulatory_se",), "compliance", "compliance")
    signed_in = await sign_in_and_open(web, se_regulator, "/w/compliance/audit")
    assert signed_in.status_code == 200

    own = await web.get("/w/compliance/audit", params={"stream": f"request:{trail.se_request}"})
    foreign = await web.get("/w/compliance/audit", params={"stream": f"request:{trail.uk_request}"})
    everything = await web.get("/w/compliance/audit")

    assert own.status_code == 200 and foreign.status_code == 200
    assert "request.submitted" in own.text
    assert "request.submitted" not in foreign.text
    # The person's event is the newest of all: on the first page were it not narrowed.
    assert f"request:{trail.se_request}" in everything.text
    assert trail.person_stream not in everything.text
    assert trail.uk_request not in everything.text


async def test_a_regional_viewer_of_every_request_opens_only_their_regions(
    api, tokens: Tokens, trail: Trail, make_user, runtime, monkeypatch
):
    """requests:view_all still stops at the edge of the person's regions."""
    roles = runtime.policy.roles
    regulator = roles.roles["compliance.regulatory_se"]
    wider = regulator.model_copy(
        update={"permissions": [*regulator.permissions, "requests:view_all"]}
    )
    policy = roles.model_copy(update={"roles": {**roles.roles, "compliance.regulatory_se": wider}})
    monkeypatch.setattr(runtime, "policy", PolicyEngine(policy, runtime.policy.chains))
    se_regulator = make_user(("compliance.regulatory_se",), "compliance", "compliance")
    headers = await tokens.headers(se_regulator)
    own = await api.get(f"/api/v1/requests/{trail.se_request}", headers=headers)
    assert own.status_code == 200, own.text
    foreign = await api.get(f"/api/v1/requests/{trail.uk_request}", headers=headers)
    assert foreign.status_code == 404

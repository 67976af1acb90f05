"""GET /api/v1/audit/export: every event a search matches, as CSV with its hashes, for the
holders of audit:export; the export itself recorded first; bad input refused, nothing written."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import func, select

from core.db import SessionFactory
from core.models import AuditEvent
from tests.conftest import Tokens

EXPORT = "/api/v1/audit/export"


def exports_by(sessions: SessionFactory, actor: str) -> int:
    with sessions() as session:
        return (
            session.scalar(
                select(func.count())
                .select_from(AuditEvent)
                .where(AuditEvent.actor == actor, AuditEvent.action == "data.exported")
            )
            or 0
        )


async def every_page(api: httpx.AsyncClient, headers: dict[str, str], **params: str) -> list[dict]:
    items: list[dict] = []
    cursor = None
    while True:
        query = {**params, "limit": "7", **({"cursor": cursor} if cursor else {})}
        page = await api.get("/api/v1/audit", params=query, headers=headers)
        assert page.status_code == 200, page.text
        items += page.json()["items"]
        cursor = page.json()["next"]
        if cursor is None:
            return items


async def test_the_export_holds_what_the_search_pages_through_and_records_itself(
    api: httpx.AsyncClient, tokens: Tokens, sessions: SessionFactory
):
    headers = await tokens.headers("comp.officer")
    for _ in range(3):  # some events of fin.clerk's own: sign-ins
        assert (
            await api.post(
                "/api/v1/auth/token", json={"username": "fin.clerk", "password": "backoffice"}
            )
        ).status_code == 200
    before = exports_by(sessions, "comp.officer")

    response = await api.get(EXPORT, params={"actor": "fin.clerk"}, headers=headers)

    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    assert 'filename="audit-' in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.content.decode("utf-8-sig"))))
    searched = await every_page(api, headers, actor="fin.clerk")
    assert [int(row["id"]) for row in rows] == [int(item["id"]) for item in searched]
    assert len(rows) >= 3
    assert {row["actor"] for row in rows} == {"fin.clerk"}
    assert all(len(row["hash"]) == 64 and len(row["prev_hash"]) == 64 for row in rows)
    assert exports_by(sessions, "comp.officer") == before + 1
    with sessions() as session:
        recorded = session.scalars(
            select(AuditEvent)
            .where(AuditEvent.actor == "comp.officer", AuditEvent.action == "data.exported")
            .order_by(AuditEvent.id.desc())
            .limit(1)
        ).one()
    assert recorded.target == "audit"
    assert recorded.channel == "api"
    assert recorded.after == {"format": "csv", "filters": {"actor": "fin.clerk"}}


async def test_reading_the_trail_is_not_enough_to_take_it_away(
    api: httpx.AsyncClient, tokens: Tokens, sessions: SessionFactory
):
    headers = await tokens.headers("admin")  # audit:view without audit:export
    assert (await api.get("/api/v1/audit", headers=headers)).status_code == 200
    before = exports_by(sessions, "admin")

    refused = await api.get(EXPORT, headers=headers)

    assert refused.status_code == 403
    assert "audit:export" in refused.json()["detail"]
    assert exports_by(sessions, "admin") == before


@pytest.mark.parametrize(
    ("params", "complaint"),
    [
        ({"since": "2026-11-23T10:00:00"}, "since must include a timezone"),
        (
            {"since": "2026-11-24T00:00:00Z", "until": "2026-11-23T00:00:00Z"},
            "since must be before until",
        ),
        ({"sensitivity": "secret"}, "sensitivity"),
        ({"until": "yesterday"}, "until"),
        ({"actor": "x" * 129}, "actor"),
    ],
)
async def test_bad_filters_are_refused_before_anything_is_written(
    api: httpx.AsyncClient, tokens: Tokens, sessions: SessionFactory, params, complaint
):
    headers = await tokens.headers("comp.officer")
    before = exports_by(sessions, "comp.officer")
    response = await api.get(EXPORT, params=params, headers=headers)
    assert response.status_code == 422, response.text
    assert complaint in response.text
    assert exports_by(sessions, "comp.officer") == before


async def test_without_credentials_there_is_no_export(api: httpx.AsyncClient):
    assert (await api.get(EXPORT)).status_code == 401


async def test_an_archiving_system_exports_with_a_key_that_holds_audit_export(
    api: httpx.AsyncClient, tokens: Tokens, sessions: SessionFactory, make_user
):
    """A key may carry audit:export (taking a report away is reading); one without it is
    refused, and the export names the key it was taken with."""
    officer = make_user(("compliance.officer",), "compliance", "compliance")
    headers = await tokens.headers(officer)

    async def key_with(permissions: list[str]) -> dict[str, str]:
        body = {
            "name": "evidence archive",
            "expires_at": (datetime.now(UTC) + timedelta(days=30)).isoformat(),
            "permissions": permissions,
        }
        issued = await api.post("/api/v1/api-keys", json=body, headers=headers)
        assert issued.status_code == 201, issued.text
        return {"X-API-Key": issued.json()["key"], "prefix": issued.json()["prefix"]}

    reader = await key_with(["audit:view"])
    archiver = await key_with(["audit:view", "audit:export"])

    refused = await api.get(EXPORT, headers={"X-API-Key": reader["X-API-Key"]})
    assert refused.status_code == 403 and "audit:export" in refused.json()["detail"]
    assert exports_by(sessions, officer) == 0

    taken = await api.get(
        EXPORT, params={"actor": officer}, headers={"X-API-Key": archiver["X-API-Key"]}
    )
    assert taken.status_code == 200, taken.text
    rows = list(csv.DictReader(io.StringIO(taken.content.decode("utf-8-sig"))))
    assert "api_key.created" in {row["action"] for row in rows}
    with sessions() as session:
        recorded = session.scalars(
            select(AuditEvent).where(
                AuditEvent.actor == officer, AuditEvent.action == "data.exported"
            )
        ).one()
    assert recorded.after is not None
    assert recorded.after["api_key"] == archiver["prefix"]


async def test_a_key_cannot_carry_other_permissions_than_view_and_export(
    api: httpx.AsyncClient, tokens: Tokens, make_user
):
    officer = make_user(("compliance.officer",), "compliance", "compliance")
    body = {
        "name": "x",
        "expires_at": (datetime.now(UTC) + timedelta(days=3)).isoformat(),
        "permissions": ["cases:edit"],
    }
    refused = await api.post("/api/v1/api-keys", json=body, headers=await tokens.headers(officer))
    assert refused.status_code == 422, refused.text
    assert "keys only read (view and export permissions)" in refused.json()["detail"]

"""Downloading a workspace list as CSV: every page of what the filters match, within the
viewer's data scope, recorded in the audit trail; refused cleanly when not allowed."""

from __future__ import annotations

import csv
import io
import re
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Page, expect
from sqlalchemy import select

from core.db import SessionFactory, transaction
from core.exports import csv_cell
from core.models import AuditEvent, Player
from tests.conftest import sign_in_and_open
from tests.web.test_workspaces import add_payment, add_players, tag

EXPORT_LINK = re.compile(r'<a href="([^"]+)" download>Download every matching row as CSV</a>')


def table(response: httpx.Response) -> list[dict[str, str]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    return list(csv.DictReader(io.StringIO(response.text)))


def export_events(sessions: SessionFactory, actor: str) -> list[AuditEvent]:
    with sessions() as session:
        return list(
            session.execute(
                select(AuditEvent)
                .where(AuditEvent.actor == actor, AuditEvent.action == "data.exported")
                .order_by(AuditEvent.id)
            ).scalars()
        )


def denials_of(sessions: SessionFactory, actor: str) -> list[AuditEvent]:
    with sessions() as session:
        return list(
            session.execute(
                select(AuditEvent).where(
                    AuditEvent.actor == actor, AuditEvent.action == "access.denied"
                )
            ).scalars()
        )


def payments_of_one_player(sessions: SessionFactory, count: int, region: str = "UK") -> str:
    """A player with `count` pending withdrawals (more than a page); returns the username."""
    label = tag()
    (player_id,) = add_players(sessions, label, [{"region": region}])
    for number in range(count):
        add_payment(
            sessions,
            f"PAY-{label}-{number:03d}",
            player_id,
            "withdrawal",
            f"{100 + number}.50",
            status="pending",
        )
    return f"{label}-player-001"


async def test_a_payments_export_holds_every_page_the_filters_match(
    web: httpx.AsyncClient, sessions: SessionFactory, make_user
):
    username = make_user(("finance.manager",), "fin-payouts", "finance")
    player = payments_of_one_player(sessions, 60)
    page = await sign_in_and_open(web, username, f"/w/finance/payments?q={player}")
    link = EXPORT_LINK.search(page.text)
    assert link, page.text
    assert "Next page" in page.text  # the page shows 25; the file must hold all 60

    response = await web.get(link.group(1).replace("&amp;", "&"))
    rows = table(response)

    assert len(rows) == 60
    assert {row["player"] for row in rows} == {player}
    assert len({row["payment_id"] for row in rows}) == 60
    assert sorted(Decimal(row["amount"]) for row in rows)[0] == Decimal("100.50")
    assert {row["status"] for row in rows} == {"pending"}  # the section's default filter
    disposition = response.headers["content-disposition"]
    assert re.fullmatch(r'attachment; filename="payments-\d{8}T\d{4}Z\.csv"', disposition)
    (event,) = export_events(sessions, username)
    assert event.target == "section:payments"
    assert event.sensitivity == "high"
    assert event.after == {
        "format": "csv",
        "filters": {"q": player, "status": "pending", "kind": "withdrawal"},
    }


async def test_an_export_leaves_out_players_outside_the_viewers_regions(
    web: httpx.AsyncClient, sessions: SessionFactory, make_user
):
    """A UK and Irish payments clerk exporting every payment gets none of a German player."""
    username = make_user(("finance.payments_clerk_uk",), "fin-payouts", "finance")
    german = payments_of_one_player(sessions, 3, region="DE")
    british = payments_of_one_player(sessions, 3, region="UK")
    await sign_in_and_open(web, username, "/w/finance/payments")

    for player, expected in ((german, 0), (british, 3)):
        rows = table(await web.get(f"/w/finance/payments/export.csv?q={player}"))
        assert len(rows) == expected, player
    everything = table(await web.get("/w/finance/payments/export.csv?status=&kind="))
    assert everything
    assert {row["region"] for row in everything} <= {"UK", "IE"}


async def test_text_that_a_spreadsheet_would_run_arrives_as_text(
    web: httpx.AsyncClient, sessions: SessionFactory, make_user
):
    label = tag()
    with transaction(sessions) as session:
        session.add(
            Player(
                id=f"PLR-{label}",
                username=f'=HYPERLINK("http://evil.example","{label}")',
                region="UK",
                segment="regular",
                vip_tier="none",
                status="active",
            )
        )
    username = make_user(("operations.agent",), "ops", "operations")
    await sign_in_and_open(web, username, "/w/operations/players")
    (row,) = table(await web.get(f"/w/operations/players/export.csv?q={label}"))
    assert row["username"] == f'\'=HYPERLINK("http://evil.example","{label}")'
    assert row["player_id"] == f"PLR-{label}"


def test_numbers_and_times_keep_their_form():
    assert csv_cell(Decimal("-12.50")) == "-12.50"  # a loss stays a number
    assert csv_cell("-12.50") == "'-12.50"  # text that looks like a formula does not
    assert csv_cell("@SUM(A1)") == "'@SUM(A1)"
    assert csv_cell(None) == ""
    assert csv_cell(True) == "yes"


async def test_the_audit_trail_export_needs_audit_export(
    web: httpx.AsyncClient, sessions: SessionFactory, make_user
):
    """The administrator may read the audit trail but not take it away: no link, a 403
    naming why, the refusal recorded, nothing exported."""
    username = make_user(("platform.admin",), "platform", "admin")
    page = await sign_in_and_open(web, username, "/w/compliance/audit")
    assert page.status_code == 200
    assert EXPORT_LINK.search(page.text) is None

    refused = await web.get("/w/compliance/audit/export.csv")

    assert refused.status_code == 403
    assert "do not allow exporting the audit trail" in refused.text
    assert export_events(sessions, username) == []
    (denial,) = denials_of(sessions, username)
    assert denial.after is not None
    assert denial.after["permission"] == "audit:export"


async def test_a_compliance_officer_exports_the_audit_trail_with_its_hashes(
    web: httpx.AsyncClient, sessions: SessionFactory, make_user
):
    username = make_user(("compliance.officer",), "compliance", "compliance")
    page = await sign_in_and_open(web, username, f"/w/compliance/audit?actor={username}")
    assert EXPORT_LINK.search(page.text), page.text

    rows = table(await web.get(f"/w/compliance/audit/export.csv?actor={username}"))

    actions = [row["action"] for row in rows]
    assert actions[0] == "data.exported"  # recorded before the first row left
    assert "auth.login" in actions
    with sessions() as session:
        for row in rows:
            stored = session.get_one(AuditEvent, int(row["id"]))
            assert (row["hash"], row["prev_hash"], row["stream"]) == (
                stored.hash,
                stored.prev_hash,
                stored.stream,
            )


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/w/finance/payments/export.csv?status=lost", "Status must be one of"),
        ("/w/finance/commissions/export.csv?month=2026-13", "Month must look like 2026-11"),
        ("/w/finance/payments/export.csv?q=a%01b", "contains control characters"),
    ],
)
async def test_a_filter_that_cannot_be_used_is_refused_and_nothing_is_exported(
    web: httpx.AsyncClient, sessions: SessionFactory, make_user, path: str, message: str
):
    username = make_user(("finance.manager",), "fin-payouts", "finance")
    await sign_in_and_open(web, username, "/w/finance/payments")
    response = await web.get(path)
    assert response.status_code == 422
    assert message in response.text
    assert export_events(sessions, username) == []


@pytest.mark.parametrize(
    "path",
    [
        "/w/finance/payments/export.csv",  # a workspace the viewer does not have
        "/w/operations/payments/export.csv",  # a section not in that workspace
        "/w/operations/nothing/export.csv",
    ],
)
async def test_a_section_one_cannot_see_cannot_be_exported(
    web: httpx.AsyncClient, sessions: SessionFactory, make_user, path: str
):
    username = make_user(("operations.agent",), "ops", "operations")
    await sign_in_and_open(web, username, "/w/operations/players")
    response = await web.get(path)
    assert response.status_code == 404
    assert export_events(sessions, username) == []


async def test_signed_out_export_goes_to_sign_in(web: httpx.AsyncClient):
    response = await web.get("/w/finance/payments/export.csv", follow_redirects=False)
    assert response.status_code in (302, 303)
    assert "/login" in response.headers["location"]


async def test_downloading_from_the_page_in_a_browser(
    page: Page, live_server: str, sessions: SessionFactory, make_user, tmp_path: Path, snap
):
    username = make_user(("finance.manager",), "fin-payouts", "finance")
    player = payments_of_one_player(sessions, 30)
    await page.goto(f"{live_server}/login")
    await page.get_by_label("Username").fill(username)
    await page.get_by_label("Password").fill("backoffice")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page).to_have_url(re.compile(r"/tasks$"))
    await page.goto(f"{live_server}/w/finance/payments?q={player}")
    await snap("payments filtered")
    async with page.expect_download() as waiting:
        await page.get_by_role("link", name="Download every matching row as CSV").click()
    download = await waiting.value
    saved = tmp_path / download.suggested_filename
    await download.save_as(saved)
    with saved.open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 30
    assert {row["player"] for row in rows} == {player}

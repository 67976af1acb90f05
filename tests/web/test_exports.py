"""Downloading a workspace list as CSV: every page of what the filters match, within the
viewer's data scope, recorded in the audit trail; refused cleanly when not allowed."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import re
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from playwright.async_api import Page, expect
from sqlalchemy import select, text
from starlette.types import Message

from api.app import create_app
from core.db import SessionFactory, transaction
from core.exports import csv_cell
from core.models import AuditEvent, Market, Player, SportEvent
from core.runtime import Runtime
from tests.conftest import sign_in_and_open
from tests.web.test_workspaces import add_payment, add_players, add_request, rows_of, tag
from web import exports as web_exports

EXPORT_LINK = re.compile(r'<a href="([^"]+)" download>Download every matching row as CSV</a>')


def table(response: httpx.Response) -> list[dict[str, str]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    return list(csv.DictReader(io.StringIO(response.content.decode("utf-8-sig"))))


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
    with saved.open(newline="", encoding="utf-8-sig") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 30
    assert {row["player"] for row in rows} == {player}


# --- long exports: batches, a download cut short, exports at once ------------------------


def many_players(sessions: SessionFactory, count: int) -> str:
    """`count` players sharing a tag in their usernames; returns the tag."""
    label = tag()
    add_players(sessions, label, [{"region": "UK"}] * count)
    return label


async def test_every_batch_of_an_export_follows_on_from_the_last(
    web: httpx.AsyncClient, sessions: SessionFactory, make_user, monkeypatch
):
    """Batches of 3 walk each kind of cursor (ids, liability totals, time-ordered audit
    events, requests): the rows are the page's rows, each once, in the page's order."""
    monkeypatch.setattr(web_exports, "EXPORT_BATCH", 3)
    label = many_players(sessions, 30)
    with transaction(sessions) as session:
        for number in range(12):
            session.add(
                SportEvent(
                    id=f"EV-{label}-{number:02d}",
                    sport="football",
                    name=f"{label} match {number}",
                    starts_at=datetime.now(UTC) + timedelta(days=1),
                    status="scheduled",
                )
            )
        session.flush()
        for number in range(12):
            # Totals repeat, and some are negative (a book that wins whatever happens).
            liability = Decimal((number % 5) * 1000 - 1500)
            session.add(
                Market(
                    id=f"MKT-{label}-{number:02d}",
                    event_id=f"EV-{label}-{number:02d}",
                    name="Match result",
                    status="open",
                    odds={"home": 2.0, "away": 2.0},
                    liability=liability,
                )
            )
    requests = [
        add_request(
            sessions, action="payment.withdrawal", target=f"PAY-{label}-{n}", status="pending"
        )
        for n in range(10)
    ]
    username = make_user(("platform.admin", "compliance.officer"), "platform", "admin")
    await sign_in_and_open(web, username, "/tasks")
    for _ in range(3):
        assert (await web.get(f"/w/compliance/audit?actor={username}")).status_code == 200

    players = table(await web.get(f"/w/crm/players/export.csv?q={label}"))
    assert [row["player_id"] for row in players] == [f"PLR-{label}-{n:03d}" for n in range(1, 31)]

    events = table(await web.get(f"/w/trading/liability/export.csv?q={label}"))
    page = await web.get(f"/w/trading/liability?q={label}")
    assert [row["event_id"] for row in events] == rows_of(page.text)
    assert len(events) == 12
    assert Decimal(events[-1]["total_liability"]) == Decimal("-1500.00")

    listed = table(await web.get(f"/w/compliance/requests/export.csv?q=PAY-{label}-"))
    assert sorted(row["request_id"] for row in listed) == sorted(map(str, requests))

    since = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    trail = table(await web.get(f"/w/compliance/audit/export.csv?actor={username}&since={since}"))
    ids = [int(row["id"]) for row in trail]
    assert len(ids) >= 5 and len(set(ids)) == len(ids)
    moments = [row["occurred_at"] for row in trail]
    assert moments == sorted(moments, reverse=True)


def raw_request(path: str, query: str, cookie: str, spec_version: str) -> dict:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": spec_version},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"host", b"testserver"), (b"cookie", cookie.encode())],
        "client": ("127.0.0.1", 50123),
        "server": ("testserver", 80),
    }


@contextlib.asynccontextmanager
async def signed_in_agent(
    runtime: Runtime, make_user
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient, str, str]]:
    """An app of its own (so its export slots are this test's), a client signed in to it
    as a new operations agent, the agent's username and the session cookie header."""
    app = create_app(runtime)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver", follow_redirects=True
    ) as client:
        username = make_user(("operations.agent",), "ops", "operations")
        await sign_in_and_open(client, username, "/w/operations/players")
        cookie = "; ".join(f"{name}={value}" for name, value in client.cookies.items())
        yield app, client, username, cookie


@pytest.fixture
def one_export_at_a_time(runtime: Runtime) -> Iterator[None]:
    plain = runtime.settings
    runtime.settings = plain.model_copy(update={"exports_at_once": 1})
    try:
        yield
    finally:
        runtime.settings = plain


def transactions_left_open(sessions: SessionFactory) -> int:
    with sessions() as session:
        return (
            session.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()"
                )
            )
            or 0
        )


@pytest.mark.parametrize("spec_version", ["2.4", "2.3"])
async def test_a_download_cut_short_ends_its_transaction_and_frees_its_slot(
    runtime: Runtime,
    worker: Any,
    sessions: SessionFactory,
    make_user,
    monkeypatch,
    one_export_at_a_time: None,
    spec_version: str,
):
    """The client goes away after the first piece: the export's snapshot ends at once (not
    when the garbage collector gets to it) and the next export may start."""
    monkeypatch.setattr(web_exports, "EXPORT_BATCH", 50)
    label = many_players(sessions, 1500)  # several pieces of 64 KiB
    async with signed_in_agent(runtime, make_user) as (app, client, _, cookie):
        checked_out = runtime.engine.pool.checkedout()  # type: ignore[attr-defined]

        gone = asyncio.Event()
        pieces: list[bytes] = []
        asked: list[bool] = []

        async def receive() -> Message:
            if not asked:
                asked.append(True)
                return {"type": "http.request", "body": b"", "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            if message["type"] != "http.response.body":
                return
            pieces.append(message["body"])
            if spec_version == "2.4":
                raise OSError("connection reset by peer")
            gone.set()
            await asyncio.sleep(3600)  # this client reads no more

        scope = raw_request("/w/operations/players/export.csv", f"q={label}", cookie, spec_version)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(app(scope, receive, send), timeout=30)

        assert len(pieces) == 1 and b"player_id" in pieces[0]
        assert pieces[0].count(b"\r\n") < 1500  # cut short: not every row went out
        assert runtime.engine.pool.checkedout() == checked_out  # type: ignore[attr-defined]
        assert transactions_left_open(sessions) == 0
        rows = table(await client.get(f"/w/operations/players/export.csv?q={label}"))
        assert len(rows) == 1500  # the only slot was given back


async def test_one_export_too_many_waits_its_turn(
    runtime: Runtime, worker: Any, sessions: SessionFactory, make_user, one_export_at_a_time: None
):
    label = many_players(sessions, 1500)
    async with signed_in_agent(runtime, make_user) as (app, client, username, cookie):
        first_piece, go_on = asyncio.Event(), asyncio.Event()
        received: list[bytes] = []

        asked: list[bool] = []

        async def receive() -> Message:
            if not asked:
                asked.append(True)
                return {"type": "http.request", "body": b"", "more_body": False}
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.body":
                received.append(message["body"])
                first_piece.set()
                await go_on.wait()  # a slow reader

        scope = raw_request("/w/operations/players/export.csv", f"q={label}", cookie, "2.4")
        slow = asyncio.create_task(app(scope, receive, send))
        await asyncio.wait_for(first_piece.wait(), timeout=30)
        before = len(export_events(sessions, username))

        busy = await client.get(f"/w/operations/players/export.csv?q={label}")

        assert busy.status_code == 429
        assert busy.headers["retry-after"] == "30"
        assert "Other exports are still downloading" in busy.text
        assert len(export_events(sessions, username)) == before  # nothing recorded
        go_on.set()
        await asyncio.wait_for(slow, timeout=60)
        whole = b"".join(received).decode("utf-8-sig")
        assert whole.count("\r\n") == 1501  # the slow one got everything
        assert len(table(await client.get(f"/w/operations/players/export.csv?q={label}"))) == 1500


async def test_an_audit_window_that_ends_before_it_starts_is_refused(
    web: httpx.AsyncClient, sessions: SessionFactory, make_user
):
    username = make_user(("compliance.officer",), "compliance", "compliance")
    await sign_in_and_open(web, username, "/w/compliance/audit")
    window = "since=2026-11-24T10:00&until=2026-11-23T10:00"
    for path in ("/w/compliance/audit", "/w/compliance/audit/export.csv"):
        response = await web.get(f"{path}?{window}")
        assert response.status_code == 422, path
        assert "Since must be before until." in response.text
    assert export_events(sessions, username) == []

"""The six department workspaces: lists, filters, keyset pages, permissions and action links.

Each test works on rows it inserts, named with a tag of its own, so rows other tests add to
the shared database never change what it sees.
"""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from html import unescape
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from playwright.async_api import Page, expect

from api.app import create_app
from core.db import SessionFactory, transaction
from core.models import (
    Affiliate,
    ApprovalRequest,
    BonusCampaign,
    Game,
    Market,
    Payment,
    Player,
    RiskRule,
    SportEvent,
)
from core.repositories import users as users_repo
from core.runtime import Runtime
from tests.conftest import HIDDEN_CSRF

ROW = re.compile(r'<tr id="row-([^"]+)"')
ACTION_LINK = re.compile(
    r'<a class="button" href="([^"]+)">([^<]+)<span class="sr-only"> ([^<]+)</span>'
)
NEXT_LINK = re.compile(r'<a href="([^"]+)" rel="next">Next page</a>')
NOW = datetime.now(UTC)

WebAs = Callable[[str], Awaitable[httpx.AsyncClient]]


@pytest.fixture
async def web_as(runtime: Runtime, worker: Any) -> AsyncIterator[WebAs]:
    """`await web_as("ops.agent")`: a browser-like client signed in through the login form."""
    app = create_app(runtime)
    clients: dict[str, httpx.AsyncClient] = {}

    async def sign_in(username: str) -> httpx.AsyncClient:
        if username in clients:
            return clients[username]
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver"
        )
        form = await client.get("/login")
        match = HIDDEN_CSRF.search(form.text)
        assert match, form.text
        response = await client.post(
            "/login",
            data={
                "username": username,
                "password": "backoffice",
                "csrf_token": match.group(1),
                "next": "/tasks",
            },
        )
        assert response.status_code == 303, response.text
        clients[username] = client
        return client

    yield sign_in
    for client in clients.values():
        await client.aclose()


def rows_of(html: str) -> list[str]:
    return ROW.findall(html)


def links_of(html: str, target: str) -> dict[str, dict[str, list[str]]]:
    """The action links of one row: label → query of its /requests/new href."""
    return {
        label: parse_qs(urlsplit(unescape(href)).query)
        for href, label, row in ACTION_LINK.findall(html)
        if row == target
    }


def next_link(html: str) -> str | None:
    match = NEXT_LINK.search(html)
    return unescape(match.group(1)) if match else None


def tag() -> str:
    return secrets.token_hex(4)


# --- the world each test inserts -----------------------------------------------------


def add_players(sessions: SessionFactory, label: str, specs: list[dict[str, Any]]) -> list[str]:
    ids = []
    with transaction(sessions) as session:
        for number, spec in enumerate(specs, start=1):
            player_id = f"PLR-{label}-{number:03d}"
            session.add(
                Player(
                    id=player_id,
                    username=f"{label}-player-{number:03d}",
                    region=spec.get("region", "UK"),
                    segment=spec.get("segment", "regular"),
                    vip_tier=spec.get("vip_tier", "none"),
                    status=spec.get("status", "active"),
                    daily_deposit_limit=spec.get("daily_deposit_limit"),
                    affiliate_id=spec.get("affiliate_id"),
                )
            )
            ids.append(player_id)
    return ids


def add_request(
    sessions: SessionFactory,
    *,
    action: str,
    target: str,
    status: str,
    amount: str | None = None,
    created_at: datetime | None = None,
    policy_version: str = "2026.11-2",
) -> uuid.UUID:
    """A request row as the read model holds it (workflow tests cover how it gets there)."""
    request_id = uuid.uuid4()
    moment = created_at or NOW
    with transaction(sessions) as session:
        requester = users_repo.by_username(session, "fin.clerk")
        assert requester is not None
        session.add(
            ApprovalRequest(
                id=request_id,
                workflow_id=f"approval-{request_id}",
                action=action,
                target=target,
                params={"amount": amount} if amount else {},
                amount=Decimal(amount) if amount else None,
                reason="test",
                requester_id=requester.id,
                status=status,
                policy_version=policy_version,
                chain={},
                current_step=0,
                created_at=moment,
                updated_at=moment,
                expires_at=moment + timedelta(days=3),
            )
        )
    return request_id


def add_payment(
    sessions: SessionFactory,
    payment_id: str,
    player_id: str,
    kind: str,
    amount: str,
    status: str = "paid",
    paid_at: datetime | None = None,
    paid_by_request: uuid.UUID | None = None,
) -> str:
    with transaction(sessions) as session:
        session.add(
            Payment(
                id=payment_id,
                player_id=player_id,
                kind=kind,
                amount=Decimal(amount),
                currency="EUR",
                method="card",
                status=status,
                paid_at=paid_at,
                paid_by_request=paid_by_request,
            )
        )
    return payment_id


@dataclass
class Trading:
    label: str
    event_id: str
    other_event_id: str
    open_market: str
    suspended_market: str


def add_trading(sessions: SessionFactory) -> Trading:
    label = tag()
    world = Trading(label, f"EVT-{label}-1", f"EVT-{label}-2", f"MKT-{label}-1", f"MKT-{label}-2")
    with transaction(sessions) as session:
        session.add_all(
            [
                SportEvent(
                    id=world.event_id,
                    sport="tennis",
                    name=f"{label} Lions v Falcons",
                    starts_at=NOW + timedelta(hours=5),
                    status="scheduled",
                ),
                SportEvent(
                    id=world.other_event_id,
                    sport="football",
                    name=f"{label} Rovers v City",
                    starts_at=NOW + timedelta(hours=9),
                    status="scheduled",
                ),
            ]
        )
        session.flush()
        session.add_all(
            [
                Market(
                    id=world.open_market,
                    event_id=world.event_id,
                    name="Match winner",
                    status="open",
                    odds={"home": "2.10", "away": "1.75"},
                    liability=Decimal("1000.00"),
                ),
                Market(
                    id=world.suspended_market,
                    event_id=world.event_id,
                    name="Both teams to score",
                    status="suspended",
                    odds={"yes": "1.90", "no": "1.90"},
                    liability=Decimal("500.00"),
                ),
                Market(
                    id=f"MKT-{label}-3",
                    event_id=world.other_event_id,
                    name="Match winner",
                    status="open",
                    odds={"home": "3.00", "draw": "3.20", "away": "2.40"},
                    liability=Decimal("4000.00"),
                ),
            ]
        )
    return world


# --- every workspace lists its entities ----------------------------------------------


async def test_each_workspace_lists_its_entities_for_a_permitted_user(
    web_as: WebAs, sessions: SessionFactory
):
    label = tag()
    trading = add_trading(sessions)
    with transaction(sessions) as session:
        session.add(
            Affiliate(
                id=f"AFF-{label}",
                name=f"{label} partner",
                plan="revshare",
                rate=Decimal("25"),
                status="active",
            )
        )
        session.add(
            Game(
                id=f"GAME-{label}",
                name=f"{label} Book of Ra",
                provider="NetEnt",
                category="slots",
                rtp=Decimal("96.00"),
                enabled=True,
                config={"min_bet": "0.1", "max_bet": "100"},
            )
        )
        session.add(
            BonusCampaign(
                id=f"BON-{label}",
                name=f"{label} Welcome",
                segment=f"seg_{label}",
                budget=Decimal("5000"),
                spend=Decimal("100"),
                status="active",
                starts_at=NOW,
                ends_at=NOW + timedelta(days=7),
            )
        )
        session.add(
            RiskRule(
                id=f"RR-{label}",
                name=f"{label} velocity",
                description="deposits in a window",
                threshold={"count": 5},
                enabled=True,
            )
        )
    (player,) = add_players(sessions, label, [{"segment": f"seg_{label}"}])
    payment = add_payment(sessions, f"PAY-{label}", player, "withdrawal", "250.00", "pending")
    request_id = add_request(
        sessions, action="payment.withdrawal", target=payment, status="approved", amount="250.00"
    )

    expectations = [
        ("ops.agent", f"/w/operations/players?q={label}", player),
        ("ops.agent", f"/w/operations/games?q={label}", f"GAME-{label}"),
        ("ops.agent", f"/w/operations/markets?q={trading.label}", trading.open_market),
        ("crm.manager", "/w/crm/segments", f"seg_{label}"),
        ("crm.manager", f"/w/crm/campaigns?q={label}", f"BON-{label}"),
        ("crm.manager", f"/w/crm/players?q={label}", player),
        ("crm.lead", f"/w/crm/affiliates?q={label}", f"AFF-{label}"),
        ("risk.analyst", f"/w/risk/risk_rules?q={label}", f"RR-{label}"),
        ("risk.analyst", f"/w/risk/players?q={label}", player),
        ("fin.clerk", f"/w/finance/payments?q={label}", payment),
        ("fin.manager", f"/w/finance/reconciliation?q={label}", str(request_id)),
        ("fin.manager", f"/w/finance/commissions?q={label}", f"AFF-{label}"),
        ("comp.officer", f"/w/compliance/requests?q={label}", str(request_id)),
        ("trading.trader", f"/w/trading/markets?q={trading.label}", trading.suspended_market),
        ("trading.trader", f"/w/trading/liability?q={trading.label}", trading.event_id),
    ]
    for username, url, expected in expectations:
        page = await (await web_as(username)).get(url)
        assert page.status_code == 200, (username, url, page.text)
        assert expected in rows_of(page.text), (username, url)

    audit_page = await (await web_as("comp.officer")).get("/w/compliance")
    assert audit_page.status_code == 200
    assert "Compliance — audit trail" in audit_page.text
    assert "auth.login" in audit_page.text  # the sign-ins above are on the trail


async def test_liability_by_event_puts_the_largest_exposure_first(
    web_as: WebAs, sessions: SessionFactory
):
    trading = add_trading(sessions)
    page = await (await web_as("trading.trader")).get(f"/w/trading/liability?q={trading.label}")
    assert rows_of(page.text) == [trading.other_event_id, trading.event_id]
    event_row = page.text.split(f'id="row-{trading.event_id}"')[1].split("</tr>")[0]
    assert "2 (1 open)" in event_row and "1,500.00" in event_row and "1,000.00" in event_row


# --- search, filters and pages -------------------------------------------------------


async def test_search_and_each_filter_narrow_the_players_list(
    web_as: WebAs, sessions: SessionFactory
):
    label = tag()
    ids = add_players(
        sessions,
        label,
        [
            {"status": "active", "region": "UK", "segment": "casual", "vip_tier": "gold"},
            {"status": "suspended", "region": "DE", "segment": "casual", "vip_tier": "none"},
            {"status": "active", "region": "DE", "segment": "new", "vip_tier": "gold"},
        ],
    )
    web = await web_as("ops.agent")

    async def listed(query: str) -> list[str]:
        page = await web.get(f"/w/operations/players?q={label}{query}")
        assert page.status_code == 200, page.text
        return rows_of(page.text)

    assert await listed("") == ids
    assert await listed("-player-002") == [ids[1]]  # search matches the username too
    assert await listed("&status=suspended") == [ids[1]]
    assert await listed("&region=DE") == [ids[1], ids[2]]
    assert await listed("&segment=new") == [ids[2]]
    assert await listed("&vip_tier=gold") == [ids[0], ids[2]]
    assert await listed("&vip_tier=gold&region=DE") == [ids[2]]
    assert await listed("&status=closed") == []
    page = await web.get(f"/w/operations/players?q={label}&status=suspended")
    assert '<option value="suspended" selected>' in page.text  # the form keeps the filter


async def test_filters_narrow_games_markets_payments_and_requests(
    web_as: WebAs, sessions: SessionFactory
):
    label = tag()
    with transaction(sessions) as session:
        for number, enabled in ((1, True), (2, False)):
            session.add(
                Game(
                    id=f"GAME-{label}-{number}",
                    name=f"{label} Gates {number}",
                    provider="Evolution",
                    category="live" if enabled else "slots",
                    rtp=Decimal("95.50"),
                    enabled=enabled,
                    config={"max_bet": "250"},
                )
            )
    (player,) = add_players(sessions, label, [{}])
    deposit = add_payment(sessions, f"PAY-{label}-1", player, "deposit", "10.00", paid_at=NOW)
    pending = add_payment(sessions, f"PAY-{label}-2", player, "withdrawal", "20.00", "pending")
    trading = add_trading(sessions)
    old_policy = add_request(
        sessions,
        action="player.suspend",
        target=player,
        status="rejected",
        policy_version=f"v-{label}",
    )
    add_request(sessions, action="player.close", target=player, status="executed")

    ops = await web_as("ops.agent")
    games = await ops.get(f"/w/operations/games?q={label}&availability=disabled")
    assert rows_of(games.text) == [f"GAME-{label}-2"]
    assert "Disabled" in games.text  # state in words
    games = await ops.get(f"/w/operations/games?q={label}&category=live")
    assert rows_of(games.text) == [f"GAME-{label}-1"]

    trader = await web_as("trading.trader")
    markets = await trader.get(f"/w/trading/markets?q={trading.label}&status=suspended")
    assert rows_of(markets.text) == [trading.suspended_market]
    markets = await trader.get(f"/w/trading/markets?q={trading.label}&sport=football")
    assert rows_of(markets.text) == [f"MKT-{trading.label}-3"]

    clerk = await web_as("fin.clerk")
    default = await clerk.get(f"/w/finance/payments?q={label}")
    assert rows_of(default.text) == [pending]  # pending withdrawals unless asked otherwise
    everything = await clerk.get(f"/w/finance/payments?q={label}&status=&kind=")
    assert rows_of(everything.text) == [deposit, pending]
    deposits = await clerk.get(f"/w/finance/payments?q={label}&status=paid&kind=deposit")
    assert rows_of(deposits.text) == [deposit]

    officer = await web_as("comp.officer")
    by_version = await officer.get(f"/w/compliance/requests?policy_version=v-{label}")
    assert rows_of(by_version.text) == [str(old_policy)]
    by_status = await officer.get(f"/w/compliance/requests?q={player}&status=executed")
    assert len(rows_of(by_status.text)) == 1 and "Executed" in by_status.text
    by_action = await officer.get(f"/w/compliance/requests?q={player}&action=player.suspend")
    assert rows_of(by_action.text) == [str(old_policy)]


async def test_next_page_continues_without_overlap_and_ends(
    web_as: WebAs, sessions: SessionFactory
):
    label = tag()
    ids = add_players(sessions, label, [{"region": "SE"}] * 30)
    web = await web_as("ops.agent")
    first = await web.get(f"/w/operations/players?q={label}&region=SE")
    first_rows = rows_of(first.text)
    assert len(first_rows) == 25
    link = next_link(first.text)
    assert link is not None and "region=SE" in link and f"q={label}" in link
    second = await web.get(link)
    second_rows = rows_of(second.text)
    assert second_rows == ids[25:]
    assert not set(first_rows) & set(second_rows)
    assert first_rows + second_rows == ids
    assert next_link(second.text) is None  # the list ends
    assert "First page" in second.text


# --- who sees what -------------------------------------------------------------------


async def test_a_workspace_the_user_lacks_is_404_and_not_in_the_sidebar(web_as: WebAs):
    clerk = await web_as("fin.clerk")
    tasks = await clerk.get("/tasks")
    assert 'href="/w/finance"' in tasks.text
    for key in ("operations", "crm", "risk", "compliance", "trading"):
        assert f'href="/w/{key}"' not in tasks.text
        for url in (f"/w/{key}", f"/w/{key}/players", f"/w/{key}/audit"):
            refused = await clerk.get(url)
            assert refused.status_code == 404, url
            assert "Page not found." in refused.text
    assert (await clerk.get("/w/nowhere")).status_code == 404
    assert (await clerk.get("/w/finance/no-such-section")).status_code == 404


async def test_a_section_without_its_permission_is_absent_and_404(web_as: WebAs):
    # The game manager holds games:view only: no players or markets in Operations.
    games_manager = await web_as("ops.games")
    page = await games_manager.get("/w/operations")
    assert page.status_code == 200
    assert "Operations — games" in page.text
    assert "/w/operations/players" not in page.text and "/w/operations/markets" not in page.text
    for section in ("players", "markets"):
        assert (await games_manager.get(f"/w/operations/{section}")).status_code == 404

    # The CRM manager holds no affiliates:view; the CRM lead does.
    crm_manager = await web_as("crm.manager")
    page = await crm_manager.get("/w/crm")
    assert "/w/crm/campaigns" in page.text and "/w/crm/affiliates" not in page.text
    assert (await crm_manager.get("/w/crm/affiliates")).status_code == 404
    assert "/w/crm/affiliates" in (await (await web_as("crm.lead")).get("/w/crm")).text

    # The clerk pays out but neither reconciles nor sees commissions.
    clerk = await web_as("fin.clerk")
    page = await clerk.get("/w/finance")
    assert "Finance — payments" in page.text
    for section in ("reconciliation", "commissions"):
        assert f"/w/finance/{section}" not in page.text
        assert (await clerk.get(f"/w/finance/{section}")).status_code == 404

    # The finance director reaches Compliance for requests (requests:view_all) and the
    # audit trail, but holds no players:view: Finance shows payments, not players.
    director = await web_as("fin.director")
    assert (await director.get("/w/compliance/requests")).status_code == 200
    assert (await director.get("/w/risk/players")).status_code == 404


async def test_action_links_follow_permissions_and_row_state(
    web_as: WebAs, sessions: SessionFactory
):
    label = tag()
    active, suspended, closed, busy = add_players(
        sessions,
        label,
        [
            {"status": "active", "daily_deposit_limit": Decimal("500.00"), "vip_tier": "silver"},
            {"status": "suspended"},
            {"status": "closed"},
            {"status": "active"},
        ],
    )
    in_flight = add_request(sessions, action="player.suspend", target=busy, status="pending")

    agent_page = (await (await web_as("ops.agent")).get(f"/w/operations/players?q={label}")).text
    agent = {target: links_of(agent_page, target) for target in (active, suspended, closed, busy)}
    assert set(agent[active]) == {"Suspend", "Close account", "Override limit"}
    assert agent[active]["Suspend"] == {"action": ["player.suspend"], "target": [active]}
    assert agent[active]["Override limit"] == {
        "action": ["player.limit_override"],
        "target": [active],
        "limit": ["daily_deposit_limit"],
        "value": ["500.00"],
    }
    assert set(agent[suspended]) == {"Close account", "Override limit"}  # no second suspension
    assert agent[closed] == {}  # a closed account takes no action
    assert "Suspend" not in agent[busy]
    assert f'href="/requests/{in_flight}"' in agent_page
    assert "Suspend: approval in progress" in agent_page

    # The lead approves suspensions but may only request closures.
    lead_page = (await (await web_as("ops.lead")).get(f"/w/operations/players?q={label}")).text
    assert set(links_of(lead_page, active)) == {"Close account"}
    # CRM sees the same players with its own action, the next tier prefilled.
    crm_page = (await (await web_as("crm.manager")).get(f"/w/crm/players?q={label}")).text
    assert links_of(crm_page, active) == {
        "Change VIP tier": {
            "action": ["player.vip_change"],
            "target": [active],
            "vip_tier": ["gold"],
        }
    }
    # Compliance may view players but requests nothing: no buttons at all.
    risk_page = (await (await web_as("comp.lead")).get(f"/w/risk/players?q={label}")).text
    assert active in rows_of(risk_page) and 'class="button"' not in risk_page

    trading = add_trading(sessions)
    trader_page = (
        await (await web_as("trading.trader")).get(f"/w/trading/markets?q={trading.label}")
    ).text
    assert links_of(trader_page, trading.open_market) == {
        "Suspend": {
            "action": ["market.status"],
            "target": [trading.open_market],
            "status": ["suspended"],
        },
        "Adjust odds": {
            "action": ["market.odds_adjustment"],
            "target": [trading.open_market],
            "selection": ["home"],
            "price": ["2.10"],
        },
    }
    assert links_of(trader_page, trading.suspended_market) == {
        "Reopen": {
            "action": ["market.status"],
            "target": [trading.suspended_market],
            "status": ["open"],
        }
    }
    # Operations sees the markets but trades nothing.
    ops_markets = (
        await (await web_as("ops.agent")).get(f"/w/operations/markets?q={trading.label}")
    ).text
    assert trading.open_market in rows_of(ops_markets) and 'class="button"' not in ops_markets


async def test_budget_rate_and_payout_links_are_prefilled_with_current_values(
    web_as: WebAs, sessions: SessionFactory
):
    label = tag()
    with transaction(sessions) as session:
        session.add_all(
            [
                BonusCampaign(
                    id=f"BON-{label}-1",
                    name=f"{label} Reload",
                    segment="casual",
                    budget=Decimal("12000.00"),
                    spend=Decimal("10.00"),
                    status="active",
                    starts_at=NOW,
                    ends_at=NOW + timedelta(days=9),
                ),
                BonusCampaign(
                    id=f"BON-{label}-2",
                    name=f"{label} Old",
                    segment="casual",
                    budget=Decimal("800.00"),
                    spend=Decimal("800.00"),
                    status="ended",
                    starts_at=NOW - timedelta(days=40),
                    ends_at=NOW - timedelta(days=10),
                ),
                Affiliate(
                    id=f"AFF-{label}",
                    name=f"{label} partner",
                    plan="cpa",
                    rate=Decimal("120.00"),
                    status="active",
                ),
            ]
        )
    (player,) = add_players(sessions, label, [{}])
    payment = add_payment(sessions, f"PAY-{label}", player, "withdrawal", "1234.50", "pending")

    crm = (await (await web_as("crm.manager")).get(f"/w/crm/campaigns?q={label}")).text
    assert links_of(crm, f"BON-{label}-1") == {
        "Change budget": {
            "action": ["bonus.budget_change"],
            "target": [f"BON-{label}-1"],
            "budget": ["12000.00"],
        }
    }
    assert links_of(crm, f"BON-{label}-2") == {}  # an ended campaign
    partners = (await (await web_as("crm.affiliates")).get(f"/w/crm/affiliates?q={label}")).text
    assert links_of(partners, f"AFF-{label}")["Change rate"]["rate"] == ["120.00"]
    finance = (await (await web_as("fin.clerk")).get(f"/w/finance/payments?q={label}")).text
    assert links_of(finance, payment) == {
        "Request payout": {
            "action": ["payment.withdrawal"],
            "target": [payment],
            "amount": ["1234.50"],
        }
    }
    # The finance manager may view affiliates but not request a rate change.
    manager = (await (await web_as("fin.manager")).get(f"/w/finance/commissions?q={label}")).text
    assert f"AFF-{label}" in rows_of(manager) and links_of(manager, f"AFF-{label}") == {}


async def test_rows_outside_the_viewers_scope_are_absent(web_as: WebAs, sessions: SessionFactory):
    label = tag()
    uk_vip, de_vip, uk_casual = add_players(
        sessions,
        label,
        [
            {"region": "UK", "segment": "high_value"},
            {"region": "DE", "segment": "high_value"},
            {"region": "UK", "segment": "casual"},
        ],
    )
    small = add_payment(sessions, f"PAY-{label}-1", uk_vip, "withdrawal", "900.00", "pending")
    large = add_payment(sessions, f"PAY-{label}-2", uk_casual, "withdrawal", "30000.00", "pending")
    add_payment(sessions, f"PAY-{label}-3", de_vip, "withdrawal", "900.00", "pending")

    # The UK payments clerk reaches UK and Irish players, up to 25,000.
    uk_clerk = (await (await web_as("fin.clerk_uk")).get(f"/w/finance/payments?q={label}")).text
    assert rows_of(uk_clerk) == [small, large]
    assert set(links_of(uk_clerk, small)) == {"Request payout"}
    assert links_of(uk_clerk, large) == {}  # above the clerk's limit
    everywhere = (await (await web_as("fin.clerk")).get(f"/w/finance/payments?q={label}")).text
    assert len(rows_of(everywhere)) == 3 and set(links_of(everywhere, large)) == {"Request payout"}

    # The UK VIP host reaches UK and Irish high-value and regular players only.
    host = (await (await web_as("crm.vip_uk")).get(f"/w/crm/players?q={label}")).text
    assert rows_of(host) == [uk_vip]


# --- bad input -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("username", "url", "message"),
    [
        ("ops.agent", "/w/operations/players?status=frozen", "Status must be one of: active"),
        ("ops.agent", "/w/operations/players?after=%27%3B--", "That page link is not valid"),
        ("ops.agent", "/w/operations/players?q=" + "x" * 101, "longer than 100 characters"),
        ("ops.agent", "/w/operations/games?provider=Nobody", "Provider must be one of"),
        ("trading.trader", "/w/trading/liability?after=lots~EVT-1", "That page link is not valid"),
        ("trading.trader", "/w/trading/liability?after=NaN~EVT-1", "That page link is not valid"),
        ("fin.manager", "/w/finance/commissions?month=2026-13", "Month must look like 2026-11"),
        ("fin.manager", "/w/finance/commissions?month=last", "Month must look like 2026-11"),
        ("fin.manager", "/w/finance/reconciliation?state=fine", "Reconciliation must be one of"),
        (
            "fin.manager",
            "/w/finance/reconciliation?after=yesterday~",
            "That page link is not valid",
        ),
        ("fin.clerk", "/w/finance/payments?kind=refund", "Kind must be one of: deposit"),
        ("fin.manager", "/w/finance/commissions?month=0000-01", "Month must look like 2026-11"),
        ("fin.manager", "/w/finance/commissions?month=9999-12", "Month must look like 2026-11"),
        ("ops.agent", "/w/operations/players?q=a%01b", "Search contains control characters"),
        ("trading.trader", "/w/trading/liability?after=1e999999~EVT-1", "not valid"),
        ("comp.officer", "/w/compliance/audit?after=99999999999999999999", "not valid"),
        ("comp.officer", "/w/compliance/requests?after=2026-11-01~not-a-uuid", "not valid"),
        ("comp.officer", "/w/compliance/audit?since=monday", "Times must look like"),
        ("comp.officer", "/w/compliance/audit?after=12a", "That page link is not valid"),
    ],
)
async def test_bad_filter_or_cursor_shows_an_inline_message_and_422(
    web_as: WebAs, username: str, url: str, message: str
):
    page = await (await web_as(username)).get(url)
    assert page.status_code == 422, page.text
    alert = re.search(r'<p class="error" role="alert">([^<]*)</p>', page.text)
    assert alert and message in unescape(alert.group(1))
    assert 'role="search"' in page.text  # the form stays, to correct the filter
    assert rows_of(page.text) == []


# --- finance figures -----------------------------------------------------------------


async def test_commissions_match_a_hand_computation(web_as: WebAs, sessions: SessionFactory):
    label = tag()
    month = datetime(2025, 3, 1, tzinfo=UTC)
    in_month, before, after = (
        month + timedelta(days=10),
        month - timedelta(days=3),
        month + timedelta(days=40),
    )
    with transaction(sessions) as session:
        session.add_all(
            [
                Affiliate(
                    id=f"AFF-{label}-1",
                    name="Rev",
                    plan="revshare",
                    rate=Decimal("25"),
                    status="active",
                ),
                Affiliate(
                    id=f"AFF-{label}-2",
                    name="Cpa",
                    plan="cpa",
                    rate=Decimal("100"),
                    status="active",
                ),
                Affiliate(
                    id=f"AFF-{label}-3",
                    name="Hyb",
                    plan="hybrid",
                    rate=Decimal("30"),
                    status="active",
                ),
            ]
        )
    rev_a, rev_b, cpa_new, cpa_old, cpa_new2, hyb, direct = add_players(
        sessions,
        label,
        [
            {"affiliate_id": f"AFF-{label}-1"},
            {"affiliate_id": f"AFF-{label}-1"},
            {"affiliate_id": f"AFF-{label}-2"},
            {"affiliate_id": f"AFF-{label}-2"},
            {"affiliate_id": f"AFF-{label}-2"},
            {"affiliate_id": f"AFF-{label}-3"},
            {},
        ],
    )
    payments = [
        # revshare: deposits 1000 + 500, paid withdrawal 300 in the month → net 1200, at 25% is 300
        (rev_a, "deposit", "1000.00", "paid", in_month),
        (rev_b, "deposit", "500.00", "paid", in_month),
        (rev_a, "withdrawal", "300.00", "paid", in_month),
        (rev_a, "withdrawal", "200.00", "pending", None),  # not paid: not counted
        (rev_b, "deposit", "999.00", "paid", before),  # another month
        (rev_b, "deposit", "777.00", "paid", after),
        # cpa: first deposits in the month by cpa_new and cpa_new2 → 2 at 100 is 200
        (cpa_new, "deposit", "20.00", "paid", in_month),
        (cpa_new, "deposit", "30.00", "paid", in_month + timedelta(days=1)),
        (cpa_old, "deposit", "50.00", "paid", before),
        (cpa_old, "deposit", "60.00", "paid", in_month),
        (cpa_new2, "deposit", "10.00", "paid", in_month),
        # hybrid: net 100 - 500 is negative → no commission
        (hyb, "deposit", "100.00", "paid", in_month),
        (hyb, "withdrawal", "500.00", "paid", in_month),
        # a player nobody referred earns nobody anything
        (direct, "deposit", "5000.00", "paid", in_month),
    ]
    for number, (player, kind, amount, status, paid_at) in enumerate(payments, start=1):
        add_payment(sessions, f"PAY-{label}-{number:02d}", player, kind, amount, status, paid_at)

    page = await (await web_as("fin.director")).get(
        f"/w/finance/commissions?q={label}&month=2025-03"
    )
    assert page.status_code == 200, page.text

    # affiliate, plan, rate | referred, deposits, withdrawals, net, first deposits, commission
    assert cells_from(page.text, f"AFF-{label}-1")[3:9] == [
        "2",
        "1,500.00",
        "300.00",
        "1,200.00",
        "1",
        "300.00",
    ]
    assert cells_from(page.text, f"AFF-{label}-2")[3:9] == [
        "3",
        "120.00",
        "0.00",
        "120.00",
        "2",
        "200.00",
    ]
    assert cells_from(page.text, f"AFF-{label}-3")[3:9] == [
        "1",
        "100.00",
        "500.00",
        "-400.00",
        "1",
        "0.00",
    ]
    assert (
        "Total on this page" in page.text and "500.00" in page.text.split("Total on this page")[1]
    )

    other_month = await (await web_as("fin.director")).get(
        f"/w/finance/commissions?q={label}&month=2025-04"
    )
    # April: only the 777.00 deposit of rev_b, at 25%.
    assert cells_from(other_month.text, f"AFF-{label}-1")[4:9] == [
        "777.00",
        "0.00",
        "777.00",
        "0",
        "194.25",
    ]
    assert cells_from(other_month.text, f"AFF-{label}-2")[7:9] == ["0", "0.00"]


def cells_from(html: str, row_id: str) -> list[str]:
    row = html.split(f'<tr id="row-{row_id}">')[1].split("</tr>")[0]
    return [
        re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
    ]


async def test_reconciliation_lists_what_was_approved_but_not_paid(
    web_as: WebAs, sessions: SessionFactory
):
    label = tag()
    (player,) = add_players(sessions, label, [{}])

    def withdrawal(number: int, status: str = "pending") -> str:
        return add_payment(
            sessions, f"PAY-{label}-{number}", player, "withdrawal", "100.00", status
        )

    stuck = add_request(
        sessions,
        action="payment.withdrawal",
        target=withdrawal(1),
        status="approved",
        amount="100.00",
    )
    unpaid = add_request(
        sessions,
        action="payment.withdrawal",
        target=withdrawal(2),
        status="executed",
        amount="100.00",
    )
    failed = add_request(
        sessions,
        action="payment.withdrawal",
        target=withdrawal(3),
        status="failed",
        amount="100.00",
    )
    matched_payment = f"PAY-{label}-4"
    matched = add_request(
        sessions,
        action="payment.withdrawal",
        target=matched_payment,
        status="executed",
        amount="100.00",
    )
    add_payment(sessions, matched_payment, player, "withdrawal", "100.00", "paid", NOW, matched)
    add_request(
        sessions,
        action="payment.withdrawal",
        target=withdrawal(5),
        status="pending",
        amount="100.00",
    )

    web = await web_as("fin.manager")
    attention = await web.get(f"/w/finance/reconciliation?q={label}")
    assert set(rows_of(attention.text)) == {str(stuck), str(unpaid), str(failed)}
    assert cells_from(attention.text, str(unpaid))[7] == "Executed not paid"
    assert cells_from(attention.text, str(stuck))[7] == "Approved not executed"
    assert cells_from(attention.text, str(failed))[7] == "Failed"
    only_unpaid = await web.get(f"/w/finance/reconciliation?q={label}&state=executed_not_paid")
    assert rows_of(only_unpaid.text) == [str(unpaid)]
    matched_page = await web.get(f"/w/finance/reconciliation?q={label}&state=matched")
    assert rows_of(matched_page.text) == [str(matched)]
    assert "Executed not paid: <strong>" in attention.text  # the tally of every state


# --- in a browser --------------------------------------------------------------------


async def test_filter_page_with_the_keyboard_and_follow_an_action(
    page: Page, sessions: SessionFactory, snap
):
    label = tag()
    ids = add_players(
        sessions,
        label,
        [{"status": "active", "region": "MT"}] * 27 + [{"status": "suspended", "region": "MT"}],
    )
    await page.goto("/login")
    await page.get_by_label("Username").fill("ops.agent")
    await page.get_by_label("Password").fill("backoffice")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page).to_have_url(re.compile(r"/tasks$"))

    await (
        page.get_by_role("navigation", name="Main")
        .get_by_role("link", name="Operations", exact=True)
        .click()
    )
    await expect(page.get_by_role("heading", name="Operations — players")).to_be_visible()
    filters = page.get_by_role("search", name="Filter players")
    await filters.get_by_label("Search").fill(label)
    await filters.get_by_label("Status").select_option("active")
    await filters.get_by_label("Search").press("Enter")
    rows = page.locator("#ws-list tbody tr")
    await expect(rows).to_have_count(25)
    await expect(rows.first).to_contain_text(ids[0])
    await snap("1-filtered")

    next_page = page.get_by_role("link", name="Next page")
    for _ in range(200):  # Tab through the page until the pager link has focus
        await page.keyboard.press("Tab")
        if await next_page.evaluate("el => el === document.activeElement"):
            break
    else:
        raise AssertionError("Next page is not reachable with Tab")
    await page.keyboard.press("Enter")
    await expect(rows).to_have_count(
        2
    )  # the 26th and 27th active players; the suspended one is filtered out
    await expect(rows.nth(1)).to_contain_text(ids[26])
    await expect(page.get_by_role("link", name="Next page")).to_have_count(0)
    await snap("2-second-page")

    await page.get_by_role("link", name=f"Suspend {ids[26]}").click()
    await expect(page).to_have_url(
        re.compile(rf"/requests/new\?action=player\.suspend&target={ids[26]}$")
    )

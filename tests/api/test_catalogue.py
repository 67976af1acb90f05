"""Every action of the catalogue end to end through the HTTP API: its chain, its executor,
its audit trail, and the requests that make no sense for their target."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from core.db import SessionFactory, transaction
from core.models import (
    Affiliate,
    AuditEvent,
    BonusCampaign,
    Decision,
    Delegation,
    Game,
    Market,
    PlatformChange,
    Player,
    RiskRule,
    SportEvent,
    User,
)
from core.repositories import users as users_repo
from tests.api.test_withdrawal_slice import audit_actions
from tests.conftest import Tokens


def _suffix() -> str:
    return secrets.token_hex(4).upper()


@dataclass
class Platform:
    """Fresh reference-platform rows for one test (the test database has none of its own)."""

    sessions: SessionFactory

    def _add(self, row: Any) -> str:
        with transaction(self.sessions) as session:
            session.add(row)
        return str(row.id)

    def player(self, status: str = "active", vip_tier: str = "none") -> str:
        s = _suffix()
        return self._add(
            Player(
                id=f"PLR-C{s}",
                username=f"cat-{s}",
                region="UK",
                segment="regular",
                vip_tier=vip_tier,
                status=status,
            )
        )

    def campaign(self, budget: str = "10000.00", spend: str = "2000.00") -> str:
        now = datetime.now(UTC)
        return self._add(
            BonusCampaign(
                id=f"BON-C{_suffix()}",
                name="Reload",
                segment="regular",
                budget=Decimal(budget),
                spend=Decimal(spend),
                status="active",
                starts_at=now,
                ends_at=now + timedelta(days=30),
            )
        )

    def affiliate(self, rate: str = "30") -> str:
        return self._add(
            Affiliate(
                id=f"AFF-C{_suffix()}",
                name="Partner",
                plan="revshare",
                rate=Decimal(rate),
                status="active",
            )
        )

    def game(self, enabled: bool = True) -> str:
        return self._add(
            Game(
                id=f"GAME-C{_suffix()}",
                name="Book of Tests",
                provider="NetEnt",
                category="slots",
                rtp=Decimal("96.00"),
                enabled=enabled,
                config={"min_bet": "0.20", "max_bet": "100", "volatility": "high"},
            )
        )

    def market(self, status: str = "open") -> str:
        s = _suffix()
        event = self._add(
            SportEvent(
                id=f"EVT-C{s}",
                sport="football",
                name="Lions v Falcons",
                starts_at=datetime.now(UTC) + timedelta(days=1),
                status="scheduled",
            )
        )
        return self._add(
            Market(
                id=f"MKT-C{s}",
                event_id=event,
                name="Match winner",
                status=status,
                odds={"home": "2.00", "draw": "3.40", "away": "3.80"},
                liability=Decimal("1000.00"),
            )
        )

    def risk_rule(self) -> str:
        return self._add(
            RiskRule(
                id=f"RR-C{_suffix()}",
                name="Large withdrawal",
                description="Withdrawal above the threshold",
                threshold={"amount_over": "10000"},
                enabled=True,
            )
        )

    def row(self, model: type, target: str) -> Any:
        with self.sessions() as session:
            return session.get(model, target)


@pytest.fixture
def platform(sessions: SessionFactory) -> Platform:
    return Platform(sessions)


async def submit(
    api: httpx.AsyncClient,
    tokens: Tokens,
    user: str,
    action: str,
    target: str,
    params: dict[str, Any],
) -> httpx.Response:
    return await api.post(
        "/api/v1/requests",
        json={"action": action, "target": target, "params": params, "reason": "catalogue test"},
        headers=await tokens.headers(user),
    )


async def decide(
    api: httpx.AsyncClient, tokens: Tokens, user: str, request_id: str, decision: str = "approve"
) -> httpx.Response:
    return await api.post(
        f"/api/v1/requests/{request_id}/decision",
        json={"decision": decision, "comment": f"{decision} by {user}"},
        headers=await tokens.headers(user),
    )


async def wait_for(
    api: httpx.AsyncClient,
    tokens: Tokens,
    user: str,
    request_id: str,
    done: Callable[[dict[str, Any]], bool],
    seconds: float = 15.0,
) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for _ in range(int(seconds * 10)):
        response = await api.get(
            f"/api/v1/requests/{request_id}", headers=await tokens.headers(user)
        )
        body = response.json()
        if done(body):
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"request did not get there: {body}")


def changes_for(sessions: SessionFactory, request_id: str) -> list[str]:
    with sessions() as session:
        rows = session.execute(
            select(PlatformChange.phase).where(PlatformChange.request_id == request_id)
        )
        return sorted(rows.scalars())


@dataclass(frozen=True)
class Case:
    action: str
    make: Callable[[Platform], str]
    params: dict[str, Any]
    requester: str
    approvers: list[str]  # in order; several for one step when it needs N approvals
    tier: str
    model: type
    check: Callable[[Any], bool]


CASES = [
    Case(
        "bonus.budget_change",
        lambda p: p.campaign("10000.00"),
        {"budget": "11000"},
        "crm.manager",
        ["crm.lead"],
        "small",
        BonusCampaign,
        lambda c: c.budget == Decimal("11000.00"),
    ),
    Case(
        "bonus.budget_change",
        lambda p: p.campaign("10000.00"),
        {"budget": "20000"},
        "crm.manager",
        ["crm.lead", "fin.manager"],
        "large",
        BonusCampaign,
        lambda c: c.budget == Decimal("20000.00"),
    ),
    Case(
        "affiliate.commission_rate",
        lambda p: p.affiliate("30"),
        {"rate": "32"},
        "crm.affiliates",
        ["crm.lead"],
        "minor",
        Affiliate,
        lambda a: a.rate == Decimal("32.00"),
    ),
    Case(
        "player.suspend",
        lambda p: p.player(),
        {},
        "ops.agent",
        ["risk.lead"],
        "standard",
        Player,
        lambda pl: pl.status == "suspended",
    ),
    Case(
        "player.close",
        lambda p: p.player(),
        {},
        "ops.agent",
        ["ops.lead", "comp.officer"],
        "standard",
        Player,
        lambda pl: pl.status == "closed",
    ),
    Case(
        "player.limit_override",
        lambda p: p.player(),
        {"limit": "daily_deposit_limit", "value": "750"},
        "ops.agent",
        ["ops.lead", "comp.officer"],
        "standard",
        Player,
        lambda pl: pl.daily_deposit_limit == Decimal("750.00"),
    ),
    Case(
        "player.vip_change",
        lambda p: p.player(vip_tier="silver"),
        {"vip_tier": "gold"},
        "crm.manager",
        ["crm.lead"],
        "standard",
        Player,
        lambda pl: pl.vip_tier == "gold",
    ),
    Case(
        "game.config_update",
        lambda p: p.game(),
        {"rtp": "95.50", "max_bet": "250"},
        "ops.games",
        ["ops.lead", "comp.officer"],
        "standard",
        Game,
        lambda g: g.rtp == Decimal("95.50") and g.config["max_bet"] == "250.00",
    ),
    Case(
        "game.availability",
        lambda p: p.game(enabled=True),
        {"enabled": "disabled"},
        "ops.games",
        ["ops.lead"],
        "standard",
        Game,
        lambda g: g.enabled is False,
    ),
    Case(
        "market.status",
        lambda p: p.market("open"),
        {"status": "suspended"},
        "trading.trader",
        ["trading.lead"],
        "standard",
        Market,
        lambda m: m.status == "suspended",
    ),
    Case(
        "market.odds_adjustment",
        lambda p: p.market(),
        {"selection": "home", "price": "2.10"},
        "trading.trader",
        ["trading.lead"],
        "within_limit",
        Market,
        lambda m: m.odds["home"] == "2.10",
    ),
    Case(
        "market.odds_adjustment",
        lambda p: p.market(),
        {"selection": "away", "price": "5.00"},
        "trading.trader",
        ["trading.lead", "risk.lead"],
        "beyond_limit",
        Market,
        lambda m: m.odds["away"] == "5.00",
    ),
    Case(
        "risk_rule.change",
        lambda p: p.risk_rule(),
        {"setting": "amount_over", "threshold": "15000", "enabled": "enabled"},
        "risk.analyst",
        ["risk.lead", "comp.officer"],
        "standard",
        RiskRule,
        lambda r: r.threshold["amount_over"] == "15000.00",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c.action}-{c.tier}" for c in CASES])
async def test_each_action_runs_its_chain_and_changes_the_platform_once(
    api, tokens, sessions, platform, case: Case
):
    target = case.make(platform)
    created = await submit(api, tokens, case.requester, case.action, target, case.params)
    assert created.status_code == 201, created.text
    request = created.json()
    assert request["tier"] == case.tier
    assert request["policy_version"] == "2026.11-2"
    assert not case.check(platform.row(case.model, target)), "changed before approval"

    for approver in case.approvers:
        answer = await decide(api, tokens, approver, request["id"])
        assert answer.status_code == 200, (approver, answer.text)

    done = await wait_for(
        api, tokens, case.requester, request["id"], lambda r: r["status"] == "executed"
    )
    assert case.check(platform.row(case.model, target)), done["outcome"]
    assert done["outcome"].startswith("Changed")
    assert changes_for(sessions, request["id"]) == ["apply"]
    actions = audit_actions(sessions, request["id"])
    assert actions.count("request.decision") == len(case.approvers)
    assert actions[-2:] == ["request.approved", "request.executed"]


async def test_a_step_needing_two_approvals_stays_open_after_one(api, tokens, platform):
    target = platform.player()
    created = await submit(
        api,
        tokens,
        "ops.agent",
        "player.limit_override",
        target,
        {"limit": "session_limit_minutes", "value": "90"},
    )
    request_id = created.json()["id"]
    first = await decide(api, tokens, "ops.lead", request_id)
    assert first.status_code == 200, first.text
    assert first.json()["status"] == "pending"
    assert first.json()["steps"][0]["approvals"] == 1
    again = await decide(api, tokens, "ops.lead", request_id)
    assert again.status_code == 409, again.text
    second = await decide(api, tokens, "risk.lead", request_id)
    assert second.status_code == 200, second.text
    await wait_for(api, tokens, "ops.agent", request_id, lambda r: r["status"] == "executed")
    assert platform.row(Player, target).session_limit_minutes == 90


@pytest.mark.parametrize(
    ("action", "make", "params", "user", "status", "words"),
    [
        ("player.suspend", lambda p: p.player("closed"), {}, "ops.agent", 409, "closed"),
        ("player.suspend", lambda p: p.player("suspended"), {}, "ops.agent", 409, "suspended"),
        ("player.close", lambda p: "PLR-NOPE", {}, "ops.agent", 422, "no player"),
        (
            "player.vip_change",
            lambda p: p.player("closed"),
            {"vip_tier": "gold"},
            "crm.manager",
            409,
            "closed",
        ),
        (
            "market.odds_adjustment",
            lambda p: p.market("suspended"),
            {"selection": "home", "price": "2.5"},
            "trading.trader",
            409,
            "suspended",
        ),
        (
            "market.odds_adjustment",
            lambda p: p.market(),
            {"selection": "over", "price": "2.5"},
            "trading.trader",
            409,
            "no selection",
        ),
        (
            "market.odds_adjustment",
            lambda p: p.market(),
            {"selection": "home", "price": "2.10", "change_percent": "1"},
            "trading.trader",
            422,
            "unknown parameter",
        ),
        (
            "market.odds_adjustment",
            lambda p: p.market(),
            {"selection": "home", "price": "1.00"},
            "trading.trader",
            422,
            "between",
        ),
        (
            "bonus.budget_change",
            lambda p: p.campaign("10000", "6000"),
            {"budget": "5000"},
            "crm.manager",
            409,
            "already spent",
        ),
        (
            "player.limit_override",
            lambda p: p.player(),
            {"limit": "weekly", "value": "10"},
            "ops.agent",
            422,
            "must be one of",
        ),
        (
            "player.limit_override",
            lambda p: p.player(),
            {"limit": "daily_loss_limit", "value": "10", "until": "2020-01-01T00:00"},
            "ops.agent",
            422,
            "future",
        ),
        (
            "player.limit_override",
            lambda p: p.player(),
            {"limit": "daily_loss_limit", "value": "ten"},
            "ops.agent",
            422,
            "number",
        ),
        (
            "game.availability",
            lambda p: p.game(),
            {"enabled": "enabled"},
            "ops.games",
            409,
            "already",
        ),
        (
            "market.status",
            lambda p: p.market(),
            {"status": "open"},
            "ops.agent",
            403,
            "market.status:request",
        ),
        (
            "risk_rule.change",
            lambda p: p.risk_rule(),
            {"setting": "count", "threshold": "3", "enabled": "enabled"},
            "risk.analyst",
            409,
            "no setting",
        ),
    ],
)
async def test_requests_that_make_no_sense_are_refused_and_write_nothing(
    api, tokens, sessions, platform, action, make, params, user, status, words
):
    target = make(platform)
    with sessions() as session:
        events_before = session.execute(select(func.count()).select_from(AuditEvent)).scalar_one()
    response = await submit(api, tokens, user, action, target, params)
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]
    with sessions() as session:
        events_after = session.execute(select(func.count()).select_from(AuditEvent)).scalar_one()
    assert events_after == events_before


async def test_an_action_that_no_longer_fits_at_execution_fails_with_the_reason(
    api, tokens, sessions, platform
):
    target = platform.player()
    created = await submit(api, tokens, "ops.agent", "player.suspend", target, {})
    request_id = created.json()["id"]
    with transaction(sessions) as session:  # closed by another path meanwhile
        player = session.get(Player, target)
        assert player is not None
        player.status = "closed"
    assert (await decide(api, tokens, "ops.lead", request_id)).status_code == 200
    done = await wait_for(api, tokens, "ops.agent", request_id, lambda r: r["status"] == "failed")
    assert "closed" in done["outcome"]
    assert platform.row(Player, target).status == "closed"
    assert changes_for(sessions, request_id) == []


async def test_a_step_outside_the_requesters_team_refuses_a_teammate(
    api, tokens, platform, make_user
):
    teammate = make_user(("compliance.officer",), "ops-desk", "compliance")
    created = await submit(api, tokens, "ops.agent", "player.close", platform.player(), {})
    request_id = created.json()["id"]
    assert (await decide(api, tokens, "ops.lead", request_id)).status_code == 200
    refused = await decide(api, tokens, teammate, request_id)
    assert refused.status_code == 403, refused.text
    assert "outside the requester's team" in refused.json()["detail"]
    assert (await decide(api, tokens, "comp.officer", request_id)).status_code == 200
    await wait_for(api, tokens, "ops.agent", request_id, lambda r: r["status"] == "executed")


async def test_a_temporary_vip_change_reverts_at_its_end_time(api, tokens, sessions, platform):
    target = platform.player(vip_tier="bronze")
    until = (datetime.now(UTC) + timedelta(seconds=4)).isoformat()
    created = await submit(
        api,
        tokens,
        "crm.manager",
        "player.vip_change",
        target,
        {"vip_tier": "gold", "until": until},
    )
    assert created.status_code == 201, created.text
    request_id = created.json()["id"]
    assert (await decide(api, tokens, "crm.lead", request_id)).status_code == 200
    executed = await wait_for(
        api, tokens, "crm.manager", request_id, lambda r: r["status"] == "executed"
    )
    assert executed["revert_at"] is not None
    assert platform.row(Player, target).vip_tier == "gold"
    reverted = await wait_for(
        api, tokens, "crm.manager", request_id, lambda r: r["reverted_at"] is not None, 20
    )
    assert platform.row(Player, target).vip_tier == "bronze"
    assert "vip_tier gold → bronze" in reverted["outcome"]
    assert changes_for(sessions, request_id) == ["apply", "revert"]
    assert audit_actions(sessions, request_id)[-1] == "request.reverted"


async def test_a_temporary_change_approved_after_its_end_changes_nothing(
    api, tokens, sessions, platform
):
    target = platform.player(vip_tier="bronze")
    until = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    created = await submit(
        api,
        tokens,
        "crm.manager",
        "player.vip_change",
        target,
        {"vip_tier": "gold", "until": until},
    )
    assert created.status_code == 201, created.text
    request_id = created.json()["id"]
    await asyncio.sleep(2.5)
    assert (await decide(api, tokens, "crm.lead", request_id)).status_code == 200
    failed = await wait_for(
        api, tokens, "crm.manager", request_id, lambda r: r["status"] == "failed"
    )
    assert "approved after its end time" in failed["outcome"]
    assert platform.row(Player, target).vip_tier == "bronze"
    assert changes_for(sessions, request_id) == []


async def test_a_delegate_approves_for_an_absent_director_once(
    api, tokens, sessions, new_withdrawal, make_user
):
    with transaction(sessions) as session:
        director = users_repo.by_username(session, "fin.director")
        delegate = make_user(("finance.manager",), "fin-treasury", "finance")
        delegate_user = users_repo.by_username(session, delegate)
        assert director is not None and delegate_user is not None
        now = datetime.now(UTC)
        session.add(
            Delegation(
                delegator_id=director.id,
                delegate_id=delegate_user.id,
                starts_at=now - timedelta(minutes=1),
                ends_at=now + timedelta(hours=1),
                reason="holiday",
                created_at=now,
            )
        )
    payment = new_withdrawal("25000.00")
    created = await api.post(
        "/api/v1/requests",
        json={"action": "payment.withdrawal", "target": payment, "params": {}, "reason": "big"},
        headers=await tokens.headers("fin.clerk"),
    )
    request_id = created.json()["id"]
    assert (await decide(api, tokens, "fin.manager", request_id)).status_code == 200
    approved = await decide(api, tokens, delegate, request_id)
    assert approved.status_code == 200, approved.text
    assert (await decide(api, tokens, "fin.director", request_id)).status_code == 409
    await wait_for(api, tokens, "fin.clerk", request_id, lambda r: r["status"] == "executed")
    with sessions() as session:
        on_behalf = session.execute(
            select(Decision.on_behalf_of_id).where(
                Decision.request_id == request_id, Decision.step_index == 1
            )
        ).scalar_one()
        assert on_behalf == director.id
        director_name = session.get(User, on_behalf)
        assert director_name is not None and director_name.username == "fin.director"


async def test_an_expired_delegation_grants_nothing(
    api, tokens, sessions, new_withdrawal, make_user
):
    delegate = make_user(("finance.clerk",), "fin-treasury", "finance")
    with transaction(sessions) as session:
        director = users_repo.by_username(session, "fin.director")
        delegate_user = users_repo.by_username(session, delegate)
        assert director is not None and delegate_user is not None
        now = datetime.now(UTC)
        session.add(
            Delegation(
                delegator_id=director.id,
                delegate_id=delegate_user.id,
                starts_at=now - timedelta(hours=2),
                ends_at=now - timedelta(hours=1),
                reason="last week",
                created_at=now - timedelta(hours=2),
            )
        )
    payment = new_withdrawal("600.00")
    created = await api.post(
        "/api/v1/requests",
        json={"action": "payment.withdrawal", "target": payment, "params": {}, "reason": "r"},
        headers=await tokens.headers("fin.clerk"),
    )
    refused = await decide(api, tokens, delegate, created.json()["id"])
    assert refused.status_code in (403, 404), refused.text
    with sessions() as session:
        decided = session.execute(
            select(func.count())
            .select_from(Decision)
            .where(Decision.request_id == created.json()["id"])
        ).scalar_one()
    assert decided == 0

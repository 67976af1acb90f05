"""Affiliate commissions per calendar month: totals over every page of the filtered list,
narrowed by the filters and by the viewer's data scope.

The expected figures are worked out here from the seeded rows, by the rules the page states
(revshare and hybrid: rate percent of the month's positive net revenue; cpa: rate per
referred player whose first paid deposit falls in the month).
"""

# `web_as` is test_workspaces' signed-in client fixture, imported and taken as an argument.
# ruff: noqa: F811

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from html import unescape

import pytest

from core.db import SessionFactory, transaction
from core.models import Affiliate
from core.runtime import Runtime
from policies.engine import PolicyEngine
from tests.web.test_workspaces import (
    WebAs,
    add_payment,
    add_players,
    cells_from,
    next_link,
    rows_of,
    tag,
    web_as,  # noqa: F401
)

MONTH_ROW = re.compile(
    r'<tr data-month="(\d{4}-\d{2})"><th scope="row">(.*?)</th>'
    r'<td class="num">(\d+)</td><td class="num">([^<]+)</td></tr>'
)
MONTHS = ("2025-01", "2025-02", "2025-03")
PLANS = (("revshare", Decimal("25")), ("cpa", Decimal("40")), ("hybrid", Decimal("12.5")))
AFFILIATES = 27  # more than one page of 25


@dataclass(frozen=True)
class Seeded:
    label: str
    plans: dict[str, tuple[str, Decimal]]  # affiliate → (plan, rate)
    players: dict[str, tuple[str, str]]  # player → (affiliate, region)
    payments: list[tuple[str, str, Decimal, datetime]]  # player, kind, amount, paid at

    def expected(
        self, *, plan: str | None = None, regions: frozenset[str] | None = None
    ) -> dict[str, tuple[int, Decimal]]:
        """Month → (affiliates earning, total commission), from the rows as seeded."""
        counted = {
            player: affiliate
            for player, (affiliate, region) in self.players.items()
            if (plan is None or self.plans[affiliate][0] == plan)
            and (regions is None or region in regions)
        }
        net: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
        first_deposit: dict[str, datetime] = {}
        for player, kind, amount, paid_at in self.payments:
            if player not in counted:
                continue
            net[(counted[player], f"{paid_at:%Y-%m}")] += amount if kind == "deposit" else -amount
            if kind == "deposit":
                first_deposit[player] = min(paid_at, first_deposit.get(player, paid_at))
        newcomers: dict[tuple[str, str], int] = defaultdict(int)
        for player, at in first_deposit.items():
            newcomers[(counted[player], f"{at:%Y-%m}")] += 1
        totals: dict[str, tuple[int, Decimal]] = {}
        for month in MONTHS:
            earned = []
            for affiliate in set(counted.values()):
                kind, rate = self.plans[affiliate]
                if kind == "cpa":
                    amount = rate * newcomers[(affiliate, month)]
                else:
                    amount = rate * max(net[(affiliate, month)], Decimal(0)) / 100
                earned.append(amount.quantize(Decimal("0.01"), ROUND_HALF_UP))
            totals[month] = (sum(1 for a in earned if a > 0), sum(earned, Decimal("0.00")))
        return totals


def seed(sessions: SessionFactory) -> Seeded:
    """27 affiliates over three plans, each with a UK and a German player who deposit and
    withdraw differently in each of three months (some months net negative)."""
    label = tag()
    plans = {f"AFF-{label}-{n:02d}": PLANS[n % len(PLANS)] for n in range(1, AFFILIATES + 1)}
    with transaction(sessions) as session:
        for affiliate, (plan, rate) in plans.items():
            session.add(
                Affiliate(id=affiliate, name=affiliate, plan=plan, rate=rate, status="active")
            )
    specs = [
        {"affiliate_id": affiliate, "region": region}
        for affiliate in plans
        for region in ("UK", "DE")
    ]
    ids = add_players(sessions, label, specs)
    players = {
        player: (spec["affiliate_id"], spec["region"])
        for player, spec in zip(ids, specs, strict=True)
    }
    payments: list[tuple[str, str, Decimal, datetime]] = []
    for n, player in enumerate(ids):
        for m in range(len(MONTHS)):
            if (n + m) % 4 == 0:
                continue  # no activity that month: a later first deposit for cpa
            paid_at = datetime(2025, m + 1, 3 + n % 20, 12, tzinfo=UTC)
            payments.append((player, "deposit", Decimal(f"{100 + 37 * n + 11 * m}.15"), paid_at))
            if (n + m) % 3 == 0:
                payments.append((player, "withdrawal", Decimal(f"{250 + 13 * n}.40"), paid_at))
    for number, (player, kind, amount, paid_at) in enumerate(payments, start=1):
        add_payment(
            sessions, f"PAY-{label}-{number:04d}", player, kind, str(amount), "paid", paid_at
        )
    return Seeded(label, plans, players, payments)


def totals_on(html: str) -> dict[str, tuple[int, Decimal]]:
    """The summary table: month → (affiliates earning, total), for the months seeded."""
    return {
        month: (int(earning), Decimal(total.replace(",", "")))
        for month, _, earning, total in MONTH_ROW.findall(html)
        if month in MONTHS
    }


def commissions_listed(html: str) -> Decimal:
    """The sum of the Commission column of the rows on this page."""
    return sum(
        (Decimal(cells_from(html, row)[8].replace(",", "")) for row in rows_of(html)), Decimal(0)
    )


@pytest.fixture
def seeded(sessions: SessionFactory) -> Seeded:
    return seed(sessions)


async def test_monthly_totals_cover_every_page(web_as: WebAs, seeded: Seeded):
    client = await web_as("fin.director")
    first = await client.get(f"/w/finance/commissions?q={seeded.label}&month=2025-03")
    assert first.status_code == 200, first.text
    expected = seeded.expected()
    assert totals_on(first.text) == expected
    assert all(total > 0 for _, total in expected.values())

    link = next_link(first.text)
    assert link is not None
    second = await client.get(link)
    assert second.status_code == 200, second.text
    assert len(rows_of(first.text)) == 25 and len(rows_of(second.text)) == AFFILIATES - 25
    # The same monthly figures whatever the page, and they add up the rows of both pages.
    assert totals_on(second.text) == expected
    listed = commissions_listed(first.text) + commissions_listed(second.text)
    assert listed == expected["2025-03"][1]
    assert commissions_listed(first.text) < listed


async def test_each_month_links_to_its_list_with_the_same_filters(web_as: WebAs, seeded: Seeded):
    client = await web_as("fin.director")
    page = await client.get(f"/w/finance/commissions?q={seeded.label}&plan=cpa&month=2025-03")
    headers = {month: unescape(cell) for month, cell, _, _ in MONTH_ROW.findall(page.text)}
    assert list(headers) == ["2025-03", "2025-02", "2025-01", "2024-12", "2024-11", "2024-10"]
    assert 'aria-current="true"' in headers["2025-03"]
    february = re.search(r'href="([^"]+)"', headers["2025-02"])
    assert february is not None
    listed = await client.get(f"/w/finance/commissions{february.group(1)}")
    assert listed.status_code == 200
    # February's list, still narrowed to the cpa affiliates of this test.
    assert 'aria-current="true">2025-02<' in listed.text
    assert len(rows_of(listed.text)) == 9
    assert commissions_listed(listed.text) == seeded.expected(plan="cpa")["2025-02"][1]


async def test_a_filter_narrows_the_totals(web_as: WebAs, seeded: Seeded):
    client = await web_as("fin.director")
    everything = totals_on(
        (await client.get(f"/w/finance/commissions?q={seeded.label}&month=2025-03")).text
    )
    revshare = totals_on(
        (
            await client.get(f"/w/finance/commissions?q={seeded.label}&plan=revshare&month=2025-03")
        ).text
    )
    assert revshare == seeded.expected(plan="revshare")
    for month in MONTHS:
        assert 0 < revshare[month][1] < everything[month][1]
        assert revshare[month][0] < everything[month][0]


async def test_a_viewer_with_a_narrower_scope_sees_smaller_totals(
    web_as: WebAs, seeded: Seeded, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
):
    """The UK and Irish payments clerk, allowed to view commissions, counts UK players only."""
    roles = runtime.policy.roles
    clerk = roles.roles["finance.payments_clerk_uk"]
    viewer = clerk.model_copy(update={"permissions": [*clerk.permissions, "commissions:view"]})
    policy = roles.model_copy(
        update={"roles": {**roles.roles, "finance.payments_clerk_uk": viewer}}
    )
    monkeypatch.setattr(runtime, "policy", PolicyEngine(policy, runtime.policy.chains))
    url = f"/w/finance/commissions?q={seeded.label}&month=2025-03"

    uk = await (await web_as("fin.clerk_uk")).get(url)
    everywhere = await (await web_as("fin.director")).get(url)

    assert uk.status_code == 200, uk.text
    assert totals_on(uk.text) == seeded.expected(regions=frozenset({"UK", "IE"}))
    for month in MONTHS:
        assert totals_on(uk.text)[month][1] < totals_on(everywhere.text)[month][1]
    # Next page's totals stay within the scope too.
    link = next_link(uk.text)
    assert link is not None
    assert totals_on((await (await web_as("fin.clerk_uk")).get(link)).text) == totals_on(uk.text)


async def test_a_bad_month_shows_no_totals(web_as: WebAs, seeded: Seeded):
    page = await (await web_as("fin.director")).get(
        f"/w/finance/commissions?q={seeded.label}&month=2025-3"
    )
    assert page.status_code == 422
    assert "Month must look like 2026-11" in page.text
    assert MONTH_ROW.search(page.text) is None


async def test_without_a_month_the_current_one_is_listed_and_shown_in_the_field(web_as: WebAs):
    client = await web_as("fin.director")
    page = await client.get("/w/finance/commissions")
    assert page.status_code == 200
    this_month = datetime.now(UTC).strftime("%Y-%m")
    assert f'name="month" type="month" value="{this_month}"' in page.text
    assert f'aria-current="true">{this_month}<' in page.text

"""A realistic mix of approval chains end to end, against withdrawals alone.

What is measured
----------------
The reference platform is seeded (`seed_reference_platform`, as `backoffice seed` does) and
N requests are drawn from a weighted mix of the catalogue (policies/approval_chains.yaml):
small and large withdrawals, small and large bonus budget changes, commission changes,
player suspensions and closures, limit overrides that need two of three responsible-gaming
approvers, VIP changes, game configuration and availability, market status, odds adjustments
within and beyond the trader's limit, and a few risk rule changes. Each one names its own
target from the seeded platform, with params that land in the intended tier, and is created
and decided over real HTTP by the demo users the chain asks for (the requester creates it,
each approver of each step approves it in order). At most C requests are in flight; then
every request is polled until it is `executed`.

- `chains_throughput`: N divided by the time from the first create to the moment the last
  request was seen `executed`. `chains_throughput_<action>_<tier>`: that kind's requests
  divided by the time from its first create to its last execution (it shares the run with
  the rest of the mix, so it is its share of the load, not what it would do alone).
- `chains_create_p50/p95`, `chains_decide_p50/p95`: one HTTP call as the client sees it.
- `withdrawals_*`: the same driver on a batch of N single-approval withdrawals, right after,
  on the same services. `ratio chains_vs_withdrawals_throughput` below 1 is what the longer
  chains (two steps, two-of-M, platform changes beyond a payout) cost in throughput.
- `worker_rss`: peak RSS of this process (web app, worker and load generator).

The app and one worker run in this process on one event loop (see bench/approvals.py).
Services are started in a temp dir unless `DATABASE_URL` / `TEMPORAL_ADDRESS` are set; on a
`DATABASE_URL` server a throwaway database is created and dropped.

    python -m bench.chains [--n 300] [--concurrency 20] [--players 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.orm import Session

from api.app import build_runtime
from bench._common import (
    Latencies,
    Progress,
    Services,
    bench_settings,
    bounded,
    expect,
    figure,
    http_client,
    logger,
    login,
    peak_rss_mb,
    ratio,
    serving,
    start_services,
    wait_all_executed,
)
from bench.approvals import Withdrawal, add_pending_withdrawals
from core.db import make_engine, make_session_factory, transaction
from core.migrate import upgrade
from core.platform_seed import PlatformSize, seed_reference_platform
from core.seed import seed_users

log = logger("chains")
CENT = Decimal("0.01")
VIP_LADDER = ("none", "bronze", "silver", "gold", "platinum")

Row = dict[str, Any]


def _scaled(value: Any, factor: str) -> str:
    return str((Decimal(str(value)) * Decimal(factor)).quantize(CENT))


def _odds_params(factor: str) -> Callable[[Row], dict[str, Any]]:
    def params(market: Row) -> dict[str, Any]:
        selection, price = next(iter(market["odds"].items()))
        return {"selection": selection, "price": _scaled(price, factor)}

    return params


def _risk_rule_params(rule: Row) -> dict[str, Any]:
    setting, value = next(iter(rule["threshold"].items()))
    current = Decimal(str(value))
    new = current * 2 if current >= 1 else current / 2
    return {"setting": setting, "threshold": str(new), "enabled": "enabled"}


def _no_params(_: Row) -> dict[str, Any]:
    return {}


def _next_vip_tier(player: Row) -> dict[str, Any]:
    index = VIP_LADDER.index(player["vip_tier"])
    return {"vip_tier": VIP_LADDER[(index + 1) % len(VIP_LADDER)]}


def _game_config(game: Row) -> dict[str, Any]:
    return {
        "rtp": "96.50" if Decimal(game["rtp"]) == Decimal("95.50") else "95.50",
        "max_bet": "250",
    }


@dataclass(frozen=True)
class Kind:
    """One kind of request in the mix: an action in one tier, who asks, who approves."""

    action: str
    tier: str
    weight: int  # per 100 requests
    requester: str
    approvers: tuple[str, ...]  # in order; a step needing two approvals names two people
    pool: str  # where targets come from (see `target_pools`)
    params: Callable[[Row], dict[str, Any]]

    @property
    def name(self) -> str:
        return re.sub(r"\W", "_", f"{self.action}_{self.tier}")


MIX: tuple[Kind, ...] = (
    Kind("payment.withdrawal", "standard", 30, "fin.clerk", ("fin.manager",), "small", _no_params),
    Kind(
        "payment.withdrawal",
        "large",
        8,
        "fin.clerk",
        ("fin.manager", "fin.director"),
        "large",
        _no_params,
    ),
    Kind(
        "bonus.budget_change",
        "small",
        6,
        "crm.manager",
        ("crm.lead",),
        "campaign",
        lambda c: {"budget": _scaled(c["budget"], "1.10")},
    ),
    Kind(
        "bonus.budget_change",
        "large",
        3,
        "crm.manager",
        ("crm.lead", "fin.manager"),
        "campaign",
        lambda c: {"budget": _scaled(c["budget"], "1.60")},
    ),
    Kind(
        "affiliate.commission_rate",
        "minor",
        3,
        "crm.affiliates",
        ("crm.lead",),
        "affiliate",
        lambda a: {"rate": _scaled(a["rate"], "1.10")},
    ),
    Kind("player.suspend", "standard", 10, "ops.agent", ("risk.lead",), "player", _no_params),
    Kind(
        "player.close",
        "standard",
        3,
        "ops.agent",
        ("ops.lead", "comp.officer"),
        "player",
        _no_params,
    ),
    Kind(
        "player.limit_override",
        "standard",
        8,
        "ops.agent",
        ("ops.lead", "comp.officer"),
        "player",
        lambda p: {"limit": "daily_deposit_limit", "value": "750"},
    ),
    Kind(
        "player.vip_change", "standard", 5, "crm.manager", ("crm.lead",), "player", _next_vip_tier
    ),
    Kind(
        "game.config_update",
        "standard",
        3,
        "ops.games",
        ("ops.lead", "comp.officer"),
        "game",
        _game_config,
    ),
    Kind(
        "game.availability",
        "standard",
        4,
        "ops.games",
        ("ops.lead",),
        "game",
        lambda g: {"enabled": "disabled" if g["enabled"] else "enabled"},
    ),
    Kind(
        "market.status",
        "standard",
        7,
        "trading.trader",
        ("trading.lead",),
        "market",
        lambda m: {"status": "suspended"},
    ),
    Kind(
        "market.odds_adjustment",
        "within_limit",
        6,
        "trading.trader",
        ("trading.lead",),
        "market",
        _odds_params("1.05"),
    ),
    Kind(
        "market.odds_adjustment",
        "beyond_limit",
        3,
        "trading.trader",
        ("trading.lead", "risk.lead"),
        "market",
        _odds_params("1.50"),
    ),
    Kind(
        "risk_rule.change",
        "standard",
        1,
        "risk.analyst",
        ("risk.lead", "comp.officer"),
        "risk_rule",
        _risk_rule_params,
    ),
)
RISK_RULES_SEEDED = 5  # one open request per target: no more risk rule changes than rules


def mix_counts(n: int, mix: Sequence[Kind] = MIX) -> dict[Kind, int]:
    """N split by weight (largest remainder); risk rule changes capped at the rules there are."""
    total = sum(kind.weight for kind in mix)
    exact = {kind: n * kind.weight / total for kind in mix}
    counts = {kind: int(share) for kind, share in exact.items()}
    by_remainder = sorted(mix, key=lambda k: exact[k] - counts[k], reverse=True)
    for kind in by_remainder[: n - sum(counts.values())]:
        counts[kind] += 1
    for kind in mix:
        if kind.pool == "risk_rule" and counts[kind] > RISK_RULES_SEEDED:
            counts[mix[0]] += counts[kind] - RISK_RULES_SEEDED
            counts[kind] = RISK_RULES_SEEDED
    return counts


@dataclass(frozen=True)
class Planned:
    kind: str
    action: str
    target: str
    params: dict[str, Any]
    requester: str
    approvers: tuple[str, ...]


POOL_QUERIES = {
    "player": "SELECT id, vip_tier FROM players WHERE status = 'active' ORDER BY id",
    "game": "SELECT id, enabled, rtp FROM games ORDER BY id",
    "market": "SELECT id, odds FROM markets WHERE status = 'open' ORDER BY id",
    "campaign": "SELECT id, budget FROM bonus_campaigns WHERE status = 'active' ORDER BY id",
    "affiliate": "SELECT id, rate FROM affiliates WHERE status = 'active' ORDER BY id",
    "risk_rule": "SELECT id, threshold FROM risk_rules ORDER BY id",
}


def target_pools(session: Session, withdrawals: Sequence[Withdrawal]) -> dict[str, Iterator[Row]]:
    """Each pool hands out every target once, so no two requests in the mix meet."""
    pools: dict[str, Iterator[Row]] = {
        name: iter([dict(row._mapping) for row in session.execute(text(query))])
        for name, query in POOL_QUERIES.items()
    }
    pools["small"] = iter([{"id": w.payment_id} for w in withdrawals if not w.large])
    pools["large"] = iter([{"id": w.payment_id} for w in withdrawals if w.large])
    return pools


def plan(counts: dict[Kind, int], pools: dict[str, Iterator[Row]], seed: int = 7) -> list[Planned]:
    planned = []
    for kind, count in counts.items():
        for _ in range(count):
            row = next(pools[kind.pool], None)
            if row is None:
                raise RuntimeError(f"the seeded platform has too few {kind.pool} targets")
            planned.append(
                Planned(
                    kind.name,
                    kind.action,
                    str(row["id"]),
                    kind.params(row),
                    kind.requester,
                    kind.approvers,
                )
            )
    random.Random(seed).shuffle(planned)
    return planned


def platform_size(counts: dict[Kind, int], players: int) -> PlatformSize:
    """The default platform, grown where the mix needs more distinct targets."""
    need = Counter[str]()
    for kind, count in counts.items():
        need[kind.pool] += count
    default = PlatformSize()
    return PlatformSize(
        players=max(players, 2 * need["player"]),
        games=max(default.games, need["game"]),
        markets=max(default.markets, 2 * need["market"]),  # about nine in ten are open
        campaigns=max(default.campaigns, need["campaign"]),
        affiliates=max(default.affiliates, need["affiliate"]),
    )


def prepare_database(url: str, n: int, players: int) -> tuple[list[Planned], list[Planned]]:
    """Migrate, seed users and platform; plan the mix and a batch of N withdrawals."""
    upgrade(url)
    counts = mix_counts(n)
    engine = make_engine(url, pool_size=1)
    try:
        with transaction(make_session_factory(engine)) as session:
            seed_users(session)
            seed_reference_platform(session, platform_size(counts, players))
            withdrawal_kinds = [k for k in counts if k.action == "payment.withdrawal"]
            in_mix = sum(counts[k] for k in withdrawal_kinds)
            large = sum(counts[k] for k in withdrawal_kinds if k.pool == "large")
            mixed = add_pending_withdrawals(session, in_mix, large / max(in_mix, 1))
            alone = add_pending_withdrawals(session, n, 0.0)
            session.flush()
            mix = plan(counts, target_pools(session, mixed))
            batch = plan({MIX[0]: n}, target_pools(session, alone))
    finally:
        engine.dispose()
    return mix, batch


# --- the driver -------------------------------------------------------------------------


@dataclass
class ChainDriver:
    """Creates and decides requests over HTTP as the right people, timing every call."""

    http: httpx.AsyncClient
    headers: dict[str, dict[str, str]]
    creates: Latencies = field(default_factory=Latencies)
    decides: Latencies = field(default_factory=Latencies)
    started: dict[str, float] = field(default_factory=dict)
    executed: dict[str, float] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)
    requesters: dict[str, str] = field(default_factory=dict)

    async def create_and_decide(self, planned: Planned, progress: Progress) -> str:
        started = time.perf_counter()
        body = {
            "action": planned.action,
            "target": planned.target,
            "params": planned.params,
            "reason": "benchmark",
        }
        created = await self.creates.time(
            self.http.post("/api/v1/requests", json=body, headers=self.headers[planned.requester])
        )
        expect(created, 201)
        request_id: str = created.json()["id"]
        self.started[request_id] = started
        self.kinds[request_id] = planned.kind
        self.requesters[request_id] = planned.requester
        for approver in planned.approvers:
            decided = await self.decides.time(
                self.http.post(
                    f"/api/v1/requests/{request_id}/decision",
                    json={"decision": "approve", "comment": "benchmark"},
                    headers=self.headers[approver],
                )
            )
            expect(decided, 200)
        progress.tick()
        return request_id

    async def status(self, request_id: str) -> str:
        response = await self.http.get(
            f"/api/v1/requests/{request_id}", headers=self.headers[self.requesters[request_id]]
        )
        expect(response, 200)
        status: str = response.json()["status"]
        return status

    def seen_executed(self, request_id: str) -> None:
        self.executed[request_id] = time.perf_counter()

    def throughput_by_kind(self) -> dict[str, float]:
        spans: dict[str, list[float]] = {}
        for request_id, kind in self.kinds.items():
            first, last, count = spans.setdefault(kind, [float("inf"), 0.0, 0])
            spans[kind] = [
                min(first, self.started[request_id]),
                max(last, self.executed[request_id]),
                count + 1,
            ]
        return {kind: count / (last - first) for kind, (first, last, count) in spans.items()}


@dataclass
class BatchResult:
    throughput: float
    driver: ChainDriver


async def run_batch(
    base_url: str, label: str, planned: Sequence[Planned], concurrency: int
) -> BatchResult:
    async with http_client(base_url, concurrency) as http:
        users = {p.requester for p in planned} | {a for p in planned for a in p.approvers}
        driver = ChainDriver(http, {user: await login(http, user) for user in sorted(users)})
        progress = Progress(f"{label} decided", len(planned))
        started = time.perf_counter()
        request_ids = await bounded(
            concurrency, [partial(driver.create_and_decide, p, progress) for p in planned]
        )
        await wait_all_executed(driver.status, request_ids, concurrency, driver.seen_executed)
        elapsed = time.perf_counter() - started
    return BatchResult(len(planned) / elapsed, driver)


def report(prefix: str, result: BatchResult, *, by_kind: bool) -> None:
    figure(f"{prefix}_throughput", result.throughput, "requests/s")
    if by_kind:
        for kind, throughput in sorted(result.driver.throughput_by_kind().items()):
            figure(f"{prefix}_throughput_{kind}", throughput, "requests/s")
    figure(f"{prefix}_create_p50", result.driver.creates.p50(), "ms")
    figure(f"{prefix}_create_p95", result.driver.creates.p95(), "ms")
    figure(f"{prefix}_decide_p50", result.driver.decides.p50(), "ms")
    figure(f"{prefix}_decide_p95", result.driver.decides.p95(), "ms")


async def run_all(
    services: Services, mix: Sequence[Planned], batch: Sequence[Planned], concurrency: int
) -> None:
    runtime = await build_runtime(
        bench_settings(), services.database_url, services.temporal_address
    )
    try:
        async with serving(runtime) as base_url:
            log(f"mix: {len(mix)} requests over HTTP, concurrency {concurrency}")
            chains = await run_batch(base_url, "mix", mix, concurrency)
            report("chains", chains, by_kind=True)
            log(f"withdrawals: {len(batch)} requests over HTTP, concurrency {concurrency}")
            withdrawals = await run_batch(base_url, "withdrawals", batch, concurrency)
            report("withdrawals", withdrawals, by_kind=False)
        ratio("chains_vs_withdrawals_throughput", chains.throughput, withdrawals.throughput)
        figure("worker_rss", peak_rss_mb(), "MB")
    finally:
        runtime.engine.dispose()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.chains", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--n", type=int, default=300, help="requests in the mix (default 300)")
    parser.add_argument("--concurrency", type=int, default=20, help="in flight (default 20)")
    parser.add_argument(
        "--players", type=int, default=5000, help="players in the seeded platform (default 5000)"
    )
    args = parser.parse_args(argv)
    if args.n < 1 or args.concurrency < 1 or args.players < 1:
        parser.error("--n, --concurrency and --players must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with (
        tempfile.TemporaryDirectory(prefix="bench-chains-", ignore_cleanup_errors=True) as tmp,
        ExitStack() as stack,
    ):
        services = start_services(Path(tmp), stack, log, fresh_database=True)
        log(f"seeding the platform and planning {args.n} requests of the mix")
        mix, batch = prepare_database(services.database_url, args.n, args.players)
        asyncio.run(run_all(services, mix, batch, args.concurrency))
        log("stopping services")
    return 0


if __name__ == "__main__":
    sys.exit(main())

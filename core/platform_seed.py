"""The reference platform generator: players, games, markets, payments, campaigns, affiliates
and risk rules, deterministic for a seed, written with COPY so a million players is minutes,
not hours. Progress goes to stderr: a live bar on a terminal, a line per tenth otherwise."""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from psycopg.types.json import Jsonb
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.models import Player

REGIONS = ("UK", "DE", "SE", "MT", "ES", "CA", "IE", "NL")
SEGMENTS = ("casual", "regular", "high_value", "bonus_hunter", "new")
VIP_TIERS = ("none", "bronze", "silver", "gold", "platinum")
VIP_WEIGHTS = (60, 20, 10, 7, 3)
METHODS = ("bank_transfer", "card", "skrill", "neteller", "trustly")
PROVIDERS = ("NetEnt", "Pragmatic Play", "Evolution", "Play'n GO", "Microgaming", "Push Gaming")
CATEGORIES = ("slots", "table", "live", "crash", "jackpot")
SPORTS = ("football", "tennis", "basketball", "ice_hockey", "esports")
TEAMS = ("Lions", "Falcons", "Rovers", "United", "City", "Wanderers", "Athletic", "Rangers")
CURRENCY = "EUR"
PENDING_WITHDRAWALS = 30  # a third of them at 10,000 or more, for the approval demo
REFERRED_SHARE = 0.4  # of players came through an affiliate (commissions are paid on them)


@dataclass(frozen=True)
class PlatformSize:
    players: int = 5_000
    games: int = 200
    markets: int = 500
    transactions_per_player: int = 10
    campaigns: int = 20
    affiliates: int = 50


DEMO_SIZE = PlatformSize()


@dataclass(frozen=True)
class SeedReport:
    rows: dict[str, int]
    seconds: float

    @property
    def players_per_second(self) -> float:
        return self.rows.get("players", 0) / self.seconds if self.seconds else 0.0


class Progress:
    """A bar on a terminal; otherwise one line per tenth, so CI logs stay short."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total = label, max(total, 1)
        self.started = time.monotonic()
        self._last_tenth = -1
        self._tty = sys.stderr.isatty()

    def update(self, done: int) -> None:
        tenth = 10 * done // self.total
        if not self._tty and (tenth == self._last_tenth or (done < self.total and tenth == 0)):
            return
        self._last_tenth = tenth
        elapsed = max(time.monotonic() - self.started, 1e-6)
        filled = 30 * done // self.total
        line = (
            f"{self.label:<15} [{'#' * filled}{'.' * (30 - filled)}] "
            f"{done:>9,}/{self.total:,} {done / elapsed:>10,.0f} rows/s"
        )
        sys.stderr.write(("\r" if self._tty else "") + line + ("" if self._tty else "\n"))
        if self._tty and done >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _copy(
    session: Session,
    table: str,
    columns: Sequence[str],
    rows: Iterator[tuple[Any, ...]],
    total: int,
) -> int:
    raw = session.connection().connection.driver_connection
    assert raw is not None
    progress = Progress(table, total)
    written = 0
    with (
        raw.cursor() as cursor,
        cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy,
    ):
        for row in rows:
            copy.write_row(row)
            written += 1
            if written % 20_000 == 0:
                progress.update(written)
    progress.update(written)
    return written


class _Generator:
    def __init__(self, size: PlatformSize, seed: int, now: datetime) -> None:
        self.size, self.rng, self.now = size, random.Random(seed), now
        # Affiliates and referrals draw from their own stream, so adding them left every
        # other table exactly as the same seed generated it before.
        self.partners = random.Random(seed + 1)

    def referrer(self) -> str | None:
        if not self.size.affiliates or self.partners.random() >= REFERRED_SHARE:
            return None
        return f"AFF-{self.partners.randint(1, self.size.affiliates):04d}"

    def money(self, low: int, high: int) -> Decimal:
        return Decimal(self.rng.randint(low * 100, high * 100)) / 100

    def players(self) -> Iterator[tuple[Any, ...]]:
        rng = self.rng
        for number in range(1, self.size.players + 1):
            limited = rng.random() < 0.3
            yield (
                f"PLR-{number:07d}",
                f"player{number:07d}",
                rng.choice(REGIONS),
                rng.choice(SEGMENTS),
                rng.choices(VIP_TIERS, weights=VIP_WEIGHTS)[0],
                "active" if rng.random() < 0.97 else "suspended",
                self.money(100, 5_000) if limited else None,
                self.money(100, 2_000) if limited else None,
                rng.choice((60, 120, 240)) if limited else None,
                self.now - timedelta(days=rng.randint(1, 900)),
                self.referrer(),
            )

    def payments(self) -> Iterator[tuple[Any, ...]]:
        rng, now = self.rng, self.now
        total = self.size.players * self.size.transactions_per_player
        for number in range(1, total + 1):
            player = f"PLR-{rng.randint(1, self.size.players):07d}"
            if number <= PENDING_WITHDRAWALS:
                large = number % 3 == 1
                amount = self.money(10_000, 60_000) if large else self.money(50, 9_900)
                created = now - timedelta(hours=rng.randint(1, 48))
                yield (
                    f"PAY-{number:07d}",
                    player,
                    "withdrawal",
                    amount,
                    CURRENCY,
                    rng.choice(METHODS),
                    "pending",
                    created,
                    None,
                )
                continue
            kind = "deposit" if number % 3 else "withdrawal"
            created = now - timedelta(hours=rng.randint(49, 24 * 365))
            yield (
                f"PAY-{number:07d}",
                player,
                kind,
                self.money(10, 2_000),
                CURRENCY,
                rng.choice(METHODS),
                "paid",
                created,
                created + timedelta(minutes=30),
            )

    def games(self) -> Iterator[tuple[Any, ...]]:
        rng = self.rng
        for number in range(1, self.size.games + 1):
            category = rng.choice(CATEGORIES)
            yield (
                f"GAME-{number:05d}",
                f"{rng.choice(('Book of', 'Gates of', 'Legend of', 'Fortune', 'Mega'))} "
                f"{rng.choice(('Ra', 'Olympus', 'Dragons', 'Gold', 'Tigers', 'Moon'))} {number}",
                rng.choice(PROVIDERS),
                category,
                Decimal(rng.randint(9400, 9900)) / 100,
                rng.random() < 0.95,
                Jsonb(
                    {
                        "min_bet": str(Decimal(rng.choice((10, 20, 50))) / 100),
                        "max_bet": str(rng.choice((100, 250, 500, 1000))),
                        "volatility": rng.choice(("low", "medium", "high")),
                    }
                ),
            )

    def events(self, count: int) -> Iterator[tuple[Any, ...]]:
        rng = self.rng
        for number in range(1, count + 1):
            home, away = rng.sample(TEAMS, 2)
            yield (
                f"EVT-{number:06d}",
                rng.choice(SPORTS),
                f"{home} v {away}",
                self.now + timedelta(hours=rng.randint(-3, 240)),
                "scheduled",
            )

    def markets(self, events: int) -> Iterator[tuple[Any, ...]]:
        rng = self.rng
        names = ("Match winner", "Total goals over/under 2.5", "Both teams to score")
        for number in range(1, self.size.markets + 1):
            name = names[(number - 1) % len(names)]
            selections = ("home", "draw", "away") if name == "Match winner" else ("yes", "no")
            odds = {s: str(Decimal(rng.randint(120, 600)) / 100) for s in selections}
            yield (
                f"MKT-{number:06d}",
                f"EVT-{(number - 1) // len(names) % events + 1:06d}",
                name,
                "open" if rng.random() < 0.9 else "suspended",
                Jsonb(odds),
                self.money(0, 250_000),
            )

    def campaigns(self) -> Iterator[tuple[Any, ...]]:
        rng = self.rng
        for number in range(1, self.size.campaigns + 1):
            budget = self.money(5_000, 200_000)
            starts = self.now - timedelta(days=rng.randint(0, 30))
            yield (
                f"BON-{number:04d}",
                f"{rng.choice(('Welcome', 'Reload', 'Weekend', 'VIP', 'Free spins'))} #{number}",
                rng.choice(SEGMENTS),
                budget,
                (budget * Decimal(rng.randint(0, 90)) / 100).quantize(Decimal("0.01")),
                "active",
                starts,
                starts + timedelta(days=rng.randint(7, 60)),
            )

    def affiliates(self) -> Iterator[tuple[Any, ...]]:
        rng = self.partners
        for number in range(1, self.size.affiliates + 1):
            plan = rng.choice(("revshare", "cpa", "hybrid"))
            rate = Decimal(rng.randint(15, 45)) if plan != "cpa" else Decimal(rng.randint(50, 250))
            yield (f"AFF-{number:04d}", f"Partner {number}", plan, rate, "active")


RISK_RULES: tuple[tuple[str, str, str, dict[str, Any]], ...] = (
    ("RR-001", "Large withdrawal", "Withdrawal above the threshold", {"amount_over": "10000"}),
    ("RR-002", "Rapid deposits", "Deposits in a short window", {"count": 5, "window_minutes": 30}),
    ("RR-003", "Bonus abuse", "Bonus wagering pattern", {"bonus_share_over": "0.8"}),
    ("RR-004", "Multi-accounting", "Shared device across accounts", {"accounts_per_device": 3}),
    ("RR-005", "Chargeback history", "Prior chargebacks", {"chargebacks": 1}),
)


def seed_reference_platform(
    session: Session, size: PlatformSize = DEMO_SIZE, *, seed: int = 7
) -> SeedReport | None:
    """Fill the reference platform once; returns None when players already exist."""
    if session.execute(select(func.count()).select_from(Player)).scalar_one() > 0:
        return None
    started = time.monotonic()
    gen = _Generator(size, seed, datetime.now(UTC).replace(microsecond=0))
    event_count = max(1, -(-size.markets // 3))
    plan: list[tuple[str, Sequence[str], Callable[[], Iterator[tuple[Any, ...]]], int]] = [
        # Before players: a player row names the affiliate who referred them.
        ("affiliates", ("id", "name", "plan", "rate", "status"), gen.affiliates, size.affiliates),
        (
            "players",
            (
                "id",
                "username",
                "region",
                "segment",
                "vip_tier",
                "status",
                "daily_deposit_limit",
                "daily_loss_limit",
                "session_limit_minutes",
                "created_at",
                "affiliate_id",
            ),
            gen.players,
            size.players,
        ),
        (
            "payments",
            (
                "id",
                "player_id",
                "kind",
                "amount",
                "currency",
                "method",
                "status",
                "created_at",
                "paid_at",
            ),
            gen.payments,
            size.players * size.transactions_per_player,
        ),
        (
            "games",
            ("id", "name", "provider", "category", "rtp", "enabled", "config"),
            gen.games,
            size.games,
        ),
        (
            "sport_events",
            ("id", "sport", "name", "starts_at", "status"),
            lambda: gen.events(event_count),
            event_count,
        ),
        (
            "markets",
            ("id", "event_id", "name", "status", "odds", "liability"),
            lambda: gen.markets(event_count),
            size.markets,
        ),
        (
            "bonus_campaigns",
            ("id", "name", "segment", "budget", "spend", "status", "starts_at", "ends_at"),
            gen.campaigns,
            size.campaigns,
        ),
        (
            "risk_rules",
            ("id", "name", "description", "threshold", "enabled"),
            lambda: ((i, n, d, Jsonb(t), True) for i, n, d, t in RISK_RULES),
            len(RISK_RULES),
        ),
    ]
    rows = {
        table: _copy(session, table, columns, make(), total) for table, columns, make, total in plan
    }
    return SeedReport(rows, time.monotonic() - started)

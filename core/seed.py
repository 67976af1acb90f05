"""Demo data for dev mode: the demo users and a small reference platform."""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.models import Payment, Player, User
from core.repositories import users as users_repo
from core.security import hash_password

DEMO_PASSWORD = "backoffice"


@dataclass(frozen=True)
class DemoUser:
    username: str
    display_name: str
    department: str
    roles: tuple[str, ...]


DEMO_USERS: tuple[DemoUser, ...] = (
    DemoUser("ops.agent", "Olga Agent", "operations", ("operations.agent",)),
    DemoUser("ops.lead", "Oscar Lead", "operations", ("operations.lead",)),
    DemoUser("crm.manager", "Carla Manager", "crm", ("crm.manager",)),
    DemoUser("risk.analyst", "Rui Analyst", "risk", ("risk.analyst",)),
    DemoUser("risk.lead", "Rita Lead", "risk", ("risk.lead",)),
    DemoUser("fin.clerk", "Felix Clerk", "finance", ("finance.clerk",)),
    DemoUser("fin.manager", "Fiona Manager", "finance", ("finance.manager",)),
    DemoUser("fin.manager2", "Frank Manager", "finance", ("finance.manager",)),
    DemoUser("fin.director", "Diana Director", "finance", ("finance.director",)),
    DemoUser("comp.officer", "Cora Officer", "compliance", ("compliance.officer",)),
    DemoUser("trading.trader", "Tom Trader", "trading", ("trading.trader",)),
    DemoUser("trading.lead", "Tara Lead", "trading", ("trading.lead",)),
    DemoUser("admin", "Ada Admin", "admin", ("platform.admin",)),
)

REGIONS = ("UK", "DE", "SE", "MT", "ES", "CA")
SEGMENTS = ("casual", "regular", "high_value", "bonus_hunter", "new")
VIP_TIERS = ("none", "bronze", "silver", "gold", "platinum")
METHODS = ("bank_transfer", "card", "skrill", "neteller", "trustly")
CURRENCY = "EUR"


def seed_users(session: Session) -> int:
    """Create the demo users that do not exist yet; returns how many were created."""
    password_hash = hash_password(DEMO_PASSWORD)
    created = 0
    for demo in DEMO_USERS:
        if users_repo.by_username(session, demo.username) is None:
            users_repo.create(
                session,
                username=demo.username,
                display_name=demo.display_name,
                department=demo.department,
                password_hash=password_hash,
                roles=demo.roles,
            )
            created += 1
    return created


def _progress(label: str, done: int, total: int) -> None:
    if sys.stderr.isatty() or done == total:
        width = 30
        filled = width * done // max(total, 1)
        sys.stderr.write(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def seed_platform(session: Session, *, players: int = 500, seed: int = 7) -> int:
    """Players and payments, deterministic for a given seed. Skips if players exist."""
    if session.execute(select(func.count()).select_from(Player)).scalar_one() > 0:
        return 0
    rng = random.Random(seed)
    now = datetime.now(UTC).replace(microsecond=0)
    batch = 1000
    for start in range(0, players, batch):
        player_rows = []
        for number in range(start + 1, min(players, start + batch) + 1):
            player_rows.append(
                Player(
                    id=f"PLR-{number:07d}",
                    username=f"player{number:07d}",
                    region=rng.choice(REGIONS),
                    segment=rng.choice(SEGMENTS),
                    vip_tier=rng.choices(VIP_TIERS, weights=(60, 20, 10, 7, 3))[0],
                    status="active",
                    created_at=now - timedelta(days=rng.randint(1, 900)),
                )
            )
        session.add_all(player_rows)
        session.flush()
        _progress("players ", min(players, start + batch), players)

    payment_number = 0

    def payment(kind: str, amount: Decimal, status: str, age_hours: int) -> Payment:
        nonlocal payment_number
        payment_number += 1
        player = rng.randint(1, players)
        return Payment(
            id=f"PAY-{payment_number:07d}",
            player_id=f"PLR-{player:07d}",
            kind=kind,
            amount=amount,
            currency=CURRENCY,
            method=rng.choice(METHODS),
            status=status,
            created_at=now - timedelta(hours=age_hours),
            paid_at=now - timedelta(hours=age_hours - 1) if status == "paid" else None,
        )

    def money(low: int, high: int) -> Decimal:
        return Decimal(rng.randint(low * 100, high * 100)) / 100

    payments = players * 4
    rows: list[Payment] = []
    # Pending withdrawals the demo approves: a third of them at 10,000 or more.
    for index in range(30):
        large = index % 3 == 0
        amount = money(10_000, 60_000) if large else money(50, 9_900)
        rows.append(payment("withdrawal", amount, "pending", rng.randint(1, 48)))
    for index in range(payments - 30):
        kind = "deposit" if index % 3 else "withdrawal"
        rows.append(payment(kind, money(10, 2_000), "paid", rng.randint(49, 24 * 365)))
        if len(rows) >= batch:
            session.add_all(rows)
            session.flush()
            rows = []
            if index + 31 < payments:
                _progress("payments", index + 31, payments)
    session.add_all(rows)
    session.flush()
    _progress("payments", payments, payments)
    return players


def seed_demo(session: Session, *, players: int = 500) -> tuple[int, int]:
    return seed_users(session), seed_platform(session, players=players)


def user_count(session: Session) -> int:
    return session.execute(select(func.count()).select_from(User)).scalar_one()

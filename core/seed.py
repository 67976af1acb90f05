"""Demo data for dev mode: the demo users and a small reference platform."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.models import User
from core.platform_seed import DEMO_SIZE, PlatformSize, SeedReport, seed_reference_platform
from core.repositories import users as users_repo
from core.security import hash_password

DEMO_PASSWORD = "backoffice"


@dataclass(frozen=True)
class DemoUser:
    username: str
    display_name: str
    department: str
    roles: tuple[str, ...]
    team: str


DEMO_USERS: tuple[DemoUser, ...] = (
    DemoUser("ops.agent", "Olga Agent", "operations", ("operations.agent",), "ops-desk"),
    DemoUser("ops.lead", "Oscar Lead", "operations", ("operations.lead",), "ops-desk"),
    DemoUser("ops.manager", "Omar Manager", "operations", ("operations.manager",), "ops-mgmt"),
    DemoUser("ops.games", "Gina Games", "operations", ("operations.game_manager",), "ops-games"),
    DemoUser("crm.manager", "Carla Manager", "crm", ("crm.manager",), "crm-campaigns"),
    DemoUser("crm.lead", "Carl Lead", "crm", ("crm.lead",), "crm-campaigns"),
    DemoUser("crm.director", "Cecile Director", "crm", ("crm.director",), "crm-mgmt"),
    DemoUser(
        "crm.affiliates", "Alma Affiliates", "crm", ("crm.affiliate_manager",), "crm-partners"
    ),
    DemoUser("risk.analyst", "Rui Analyst", "risk", ("risk.analyst",), "risk-fraud"),
    DemoUser("risk.lead", "Rita Lead", "risk", ("risk.lead",), "risk-fraud"),
    DemoUser("risk.head", "Raul Head", "risk", ("risk.head",), "risk-mgmt"),
    DemoUser("fin.clerk", "Felix Clerk", "finance", ("finance.clerk",), "fin-payouts"),
    DemoUser("fin.manager", "Fiona Manager", "finance", ("finance.manager",), "fin-payouts"),
    DemoUser("fin.manager2", "Frank Manager", "finance", ("finance.manager",), "fin-treasury"),
    DemoUser("fin.director", "Diana Director", "finance", ("finance.director",), "fin-mgmt"),
    DemoUser("comp.officer", "Cora Officer", "compliance", ("compliance.officer",), "compliance"),
    DemoUser("comp.lead", "Colin Lead", "compliance", ("compliance.lead",), "compliance"),
    DemoUser("trading.trader", "Tom Trader", "trading", ("trading.trader",), "trading-desk"),
    DemoUser("trading.lead", "Tara Lead", "trading", ("trading.lead",), "trading-desk"),
    DemoUser("trading.head", "Theo Head", "trading", ("trading.head",), "trading-mgmt"),
    DemoUser("admin", "Ada Admin", "admin", ("platform.admin",), "platform"),
)


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
                team=demo.team,
            )
            created += 1
    return created


def seed_demo(session: Session, size: PlatformSize = DEMO_SIZE) -> tuple[int, SeedReport | None]:
    """Demo users and the reference platform; both skip what already exists."""
    return seed_users(session), seed_reference_platform(session, size)


def user_count(session: Session) -> int:
    return session.execute(select(func.count()).select_from(User)).scalar_one()

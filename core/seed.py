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


def seed_demo(session: Session, size: PlatformSize = DEMO_SIZE) -> tuple[int, SeedReport | None]:
    """Demo users and the reference platform; both skip what already exists."""
    return seed_users(session), seed_reference_platform(session, size)


def user_count(session: Session) -> int:
    return session.execute(select(func.count()).select_from(User)).scalar_one()

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
    # One person for each of the more specialised roles, so every module can be tried.
    DemoUser("ops.support", "Sam Support", "operations", ("operations.support_agent",), "ops-care"),
    DemoUser(
        "ops.support_lead", "Sofia Support", "operations", ("operations.support_lead",), "ops-care"
    ),
    DemoUser("ops.kyc", "Kim Checks", "operations", ("operations.kyc_agent",), "ops-kyc"),
    DemoUser("ops.kyc_lead", "Kurt Checks", "operations", ("operations.kyc_lead",), "ops-kyc"),
    DemoUser("ops.rg", "Ruth Safer", "operations", ("operations.rg_specialist",), "ops-rg"),
    DemoUser(
        "ops.content", "Cody Content", "operations", ("operations.content_manager",), "ops-games"
    ),
    DemoUser(
        "ops.supervisor", "Sue Shift", "operations", ("operations.shift_supervisor",), "ops-shift"
    ),
    DemoUser("crm.vip", "Vera Vip", "crm", ("crm.vip_manager",), "crm-vip"),
    DemoUser("crm.vip_uk", "Victor Host", "crm", ("crm.vip_host_uk",), "crm-vip"),
    DemoUser(
        "crm.campaigns", "Camila Campaigns", "crm", ("crm.campaign_executive",), "crm-campaigns"
    ),
    DemoUser("crm.retention", "Rhea Retention", "crm", ("crm.retention_manager",), "crm-retention"),
    DemoUser("crm.analyst", "Andy Analyst", "crm", ("crm.analyst",), "crm-insight"),
    DemoUser("risk.fraud", "Fred Fraud", "risk", ("risk.fraud_analyst",), "risk-fraud"),
    DemoUser("risk.aml", "Amal Investigator", "risk", ("risk.aml_investigator",), "risk-aml"),
    DemoUser(
        "risk.bonus_abuse", "Boris Abuse", "risk", ("risk.bonus_abuse_analyst",), "risk-fraud"
    ),
    DemoUser(
        "risk.payments", "Petra Payments", "risk", ("risk.payments_analyst",), "risk-payments"
    ),
    DemoUser(
        "risk.sportsbook", "Simon Sharp", "risk", ("risk.sportsbook_analyst",), "risk-sportsbook"
    ),
    DemoUser(
        "fin.clerk_uk", "Una Clerk", "finance", ("finance.payments_clerk_uk",), "fin-payouts-uk"
    ),
    DemoUser(
        "fin.clerk_de", "Dirk Clerk", "finance", ("finance.payments_clerk_de",), "fin-payouts-de"
    ),
    DemoUser(
        "fin.recon", "Rosa Recon", "finance", ("finance.reconciliation_analyst",), "fin-recon"
    ),
    DemoUser(
        "fin.treasury", "Tess Treasury", "finance", ("finance.treasury_manager",), "fin-treasury"
    ),
    DemoUser("fin.controller", "Carlo Controller", "finance", ("finance.controller",), "fin-mgmt"),
    DemoUser(
        "comp.auditor", "Audrey Auditor", "compliance", ("compliance.auditor",), "internal-audit"
    ),
    DemoUser("comp.mlro", "Miles Reporting", "compliance", ("compliance.mlro",), "compliance-aml"),
    DemoUser(
        "comp.games", "Greta Games", "compliance", ("compliance.game_compliance",), "compliance"
    ),
    DemoUser(
        "trading.football",
        "Fergus Football",
        "trading",
        ("trading.trader_football",),
        "trading-desk",
    ),
    DemoUser(
        "trading.tennis", "Tina Tennis", "trading", ("trading.trader_tennis",), "trading-desk"
    ),
    DemoUser(
        "trading.liability",
        "Liam Liability",
        "trading",
        ("trading.liability_manager",),
        "trading-risk",
    ),
    DemoUser(
        "trading.pricing", "Paula Pricing", "trading", ("trading.pricing_analyst",), "trading-quant"
    ),
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

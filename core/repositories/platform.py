"""Lists of the reference platform's entities for the workspaces: search, filters, keyset pages.

Every list is ordered by a unique key and continues after a cursor (never OFFSET). Entity
lists use the string id; aggregated lists (liability by event) and the request lists use a
composite key, each with its cursor type here.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    case,
    func,
    literal,
    or_,
    select,
    true,
    union_all,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql import Subquery

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
    User,
)
from core.repositories.payments import OPEN_REQUEST_STATUSES
from core.repositories.requests import RequestCursor, created_before
from core.repositories.scope import EVERY_PLAYER, PlayerScope
from core.repositories.text_search import matches_any

ZERO = Decimal("0")


def _page_by_id(
    session: Session,
    stmt: Select[*tuple[Any, ...]],
    id_column: Any,
    conditions: Sequence[ColumnElement[bool] | None],
    after: str | None,
    limit: int,
) -> list[Any]:
    stmt = _where(stmt, conditions)
    if after is not None:
        stmt = stmt.where(id_column > after)
    return list(session.execute(stmt.order_by(id_column).limit(limit)))


def _equals(column: Any, value: object | None) -> ColumnElement[bool] | None:
    return None if value is None else column == value


def _where(stmt: Any, conditions: Sequence[ColumnElement[bool] | None]) -> Any:
    for condition in conditions:
        if condition is not None:
            stmt = stmt.where(condition)
    return stmt


# --- entities ------------------------------------------------------------------------


@dataclass(frozen=True)
class PlayerFilters:
    query: str | None = None
    status: str | None = None
    region: str | None = None
    segment: str | None = None
    vip_tier: str | None = None


def players(
    session: Session,
    filters: PlayerFilters,
    *,
    scope: PlayerScope = EVERY_PLAYER,
    after: str | None = None,
    limit: int = 25,
) -> list[Player]:
    rows = _page_by_id(
        session,
        select(Player),
        Player.id,
        [
            matches_any(filters.query, Player.id, Player.username),
            _equals(Player.status, filters.status),
            _equals(Player.region, filters.region),
            _equals(Player.segment, filters.segment),
            _equals(Player.vip_tier, filters.vip_tier),
            *scope.conditions(),
        ],
        after,
        limit,
    )
    return [row[0] for row in rows]


@dataclass(frozen=True)
class GameFilters:
    query: str | None = None
    provider: str | None = None
    category: str | None = None
    enabled: bool | None = None


def games(
    session: Session, filters: GameFilters, *, after: str | None = None, limit: int = 25
) -> list[Game]:
    rows = _page_by_id(
        session,
        select(Game),
        Game.id,
        [
            matches_any(filters.query, Game.id, Game.name),
            _equals(Game.provider, filters.provider),
            _equals(Game.category, filters.category),
            _equals(Game.enabled, filters.enabled),
        ],
        after,
        limit,
    )
    return [row[0] for row in rows]


def providers(session: Session) -> list[str]:
    return list(session.execute(select(Game.provider).distinct().order_by(Game.provider)).scalars())


@dataclass(frozen=True)
class MarketFilters:
    query: str | None = None
    status: str | None = None
    sport: str | None = None
    event_id: str | None = None


@dataclass(frozen=True)
class MarketRow:
    market: Market
    event: SportEvent


def markets(
    session: Session, filters: MarketFilters, *, after: str | None = None, limit: int = 25
) -> list[MarketRow]:
    rows = _page_by_id(
        session,
        select(Market, SportEvent).join(SportEvent, SportEvent.id == Market.event_id),
        Market.id,
        [
            matches_any(filters.query, Market.id, Market.name, SportEvent.name),
            _equals(Market.status, filters.status),
            _equals(SportEvent.sport, filters.sport),
            _equals(Market.event_id, filters.event_id),
        ],
        after,
        limit,
    )
    return [MarketRow(market, event) for market, event in rows]


@dataclass(frozen=True)
class EventLiability:
    event: SportEvent
    markets: int
    open_markets: int
    total: Decimal
    largest: Decimal


@dataclass(frozen=True)
class LiabilityCursor:
    total: Decimal
    event_id: str


def liability_by_event(
    session: Session,
    *,
    query: str | None = None,
    sport: str | None = None,
    after: LiabilityCursor | None = None,
    limit: int = 25,
) -> list[EventLiability]:
    """Events by total liability of their markets, largest exposure first."""
    total = func.sum(Market.liability)
    stmt = (
        select(
            SportEvent,
            func.count(Market.id),
            func.count(Market.id).filter(Market.status == "open"),
            total,
            func.max(Market.liability),
        )
        .join(Market, Market.event_id == SportEvent.id)
        .group_by(SportEvent.id)
        .order_by(total.desc(), SportEvent.id)
        .limit(limit)
    )
    for condition in (
        matches_any(query, SportEvent.id, SportEvent.name),
        _equals(SportEvent.sport, sport),
    ):
        if condition is not None:
            stmt = stmt.where(condition)
    if after is not None:
        stmt = stmt.having(
            or_(total < after.total, and_(total == after.total, SportEvent.id > after.event_id))
        )
    return [
        EventLiability(event, count, open_count, amount, largest)
        for event, count, open_count, amount, largest in session.execute(stmt)
    ]


@dataclass(frozen=True)
class CampaignFilters:
    query: str | None = None
    status: str | None = None
    segment: str | None = None


def campaigns(
    session: Session, filters: CampaignFilters, *, after: str | None = None, limit: int = 25
) -> list[BonusCampaign]:
    rows = _page_by_id(
        session,
        select(BonusCampaign),
        BonusCampaign.id,
        [
            matches_any(filters.query, BonusCampaign.id, BonusCampaign.name),
            _equals(BonusCampaign.status, filters.status),
            _equals(BonusCampaign.segment, filters.segment),
        ],
        after,
        limit,
    )
    return [row[0] for row in rows]


@dataclass(frozen=True)
class SegmentSummary:
    segment: str
    players: int
    active_players: int
    campaigns: int
    budget: Decimal
    spend: Decimal


def segments(session: Session, scope: PlayerScope = EVERY_PLAYER) -> list[SegmentSummary]:
    """Each player segment in scope with its players and the bonus campaigns aimed at it."""
    people_stmt = select(
        Player.segment.label("segment"),
        func.count().label("players"),
        func.count().filter(Player.status == "active").label("active"),
    ).group_by(Player.segment)
    people = _where(people_stmt, scope.conditions()).subquery()
    money = (
        select(
            BonusCampaign.segment.label("segment"),
            func.count().label("campaigns"),
            func.sum(BonusCampaign.budget).label("budget"),
            func.sum(BonusCampaign.spend).label("spend"),
        )
        .where(
            BonusCampaign.status == "active",
            true() if scope.segments is None else BonusCampaign.segment.in_(list(scope.segments)),
        )
        .group_by(BonusCampaign.segment)
        .subquery()
    )
    segment = func.coalesce(people.c.segment, money.c.segment)
    stmt = (
        select(
            segment,
            func.coalesce(people.c.players, 0),
            func.coalesce(people.c.active, 0),
            func.coalesce(money.c.campaigns, 0),
            func.coalesce(money.c.budget, ZERO),
            func.coalesce(money.c.spend, ZERO),
        )
        .select_from(people)
        .join(money, money.c.segment == people.c.segment, full=True)
        .order_by(segment)
    )
    return [SegmentSummary(*row) for row in session.execute(stmt)]


@dataclass(frozen=True)
class AffiliateFilters:
    query: str | None = None
    plan: str | None = None
    status: str | None = None


def _affiliate_conditions(filters: AffiliateFilters) -> list[ColumnElement[bool] | None]:
    return [
        matches_any(filters.query, Affiliate.id, Affiliate.name),
        _equals(Affiliate.plan, filters.plan),
        _equals(Affiliate.status, filters.status),
    ]


def affiliates(
    session: Session, filters: AffiliateFilters, *, after: str | None = None, limit: int = 25
) -> list[Affiliate]:
    rows = _page_by_id(
        session, select(Affiliate), Affiliate.id, _affiliate_conditions(filters), after, limit
    )
    return [row[0] for row in rows]


@dataclass(frozen=True)
class RiskRuleFilters:
    query: str | None = None
    enabled: bool | None = None


def risk_rules(
    session: Session, filters: RiskRuleFilters, *, after: str | None = None, limit: int = 25
) -> list[RiskRule]:
    rows = _page_by_id(
        session,
        select(RiskRule),
        RiskRule.id,
        [
            matches_any(filters.query, RiskRule.id, RiskRule.name, RiskRule.description),
            _equals(RiskRule.enabled, filters.enabled),
        ],
        after,
        limit,
    )
    return [row[0] for row in rows]


@dataclass(frozen=True)
class PaymentFilters:
    query: str | None = None
    status: str | None = None
    kind: str | None = None
    method: str | None = None


@dataclass(frozen=True)
class PaymentListRow:
    payment: Payment
    player: Player


def payments(
    session: Session,
    filters: PaymentFilters,
    *,
    scope: PlayerScope = EVERY_PLAYER,
    after: str | None = None,
    limit: int = 25,
) -> list[PaymentListRow]:
    rows = _page_by_id(
        session,
        select(Payment, Player).join(Player, Player.id == Payment.player_id),
        Payment.id,
        [
            matches_any(filters.query, Payment.id, Player.id, Player.username),
            _equals(Payment.status, filters.status),
            _equals(Payment.kind, filters.kind),
            _equals(Payment.method, filters.method),
            *scope.conditions(),
        ],
        after,
        limit,
    )
    return [PaymentListRow(payment, player) for payment, player in rows]


def open_requests(
    session: Session, targets: Collection[str], actions: Collection[str]
) -> dict[tuple[str, str], uuid.UUID]:
    """(action, target) → the pending or approved request on it, for the rows of one page."""
    if not targets or not actions:
        return {}
    stmt = select(ApprovalRequest.action, ApprovalRequest.target, ApprovalRequest.id).where(
        ApprovalRequest.target.in_(list(targets)),
        ApprovalRequest.action.in_(list(actions)),
        ApprovalRequest.status.in_(OPEN_REQUEST_STATUSES),
    )
    return {(action, target): request_id for action, target, request_id in session.execute(stmt)}


# --- requests (compliance) and reconciliation (finance) ------------------------------


def policy_versions(session: Session) -> list[str]:
    stmt = (
        select(ApprovalRequest.policy_version).distinct().order_by(ApprovalRequest.policy_version)
    )
    return list(session.execute(stmt).scalars())


WITHDRAWAL = "payment.withdrawal"
# What a finance controller looks for when approvals and payouts disagree.
MISMATCHES = ("approved_not_executed", "executed_not_paid", "failed", "amount_differs")
RECONCILIATION_STATES = ("needs_attention", *MISMATCHES, "matched")


def _mismatch() -> Any:
    """The reconciliation state of a withdrawal request against its payment, as SQL."""
    paid_by_it = and_(Payment.status == "paid", Payment.paid_by_request == ApprovalRequest.id)
    return case(
        (ApprovalRequest.status == "approved", literal("approved_not_executed")),
        (ApprovalRequest.status == "failed", literal("failed")),
        (and_(ApprovalRequest.status == "executed", ~paid_by_it), literal("executed_not_paid")),
        (
            and_(
                ApprovalRequest.status == "executed",
                ApprovalRequest.amount.is_not(None),
                ApprovalRequest.amount != Payment.amount,
            ),
            literal("amount_differs"),
        ),
        (ApprovalRequest.status == "executed", literal("matched")),
        else_=literal("open"),
    )


@dataclass(frozen=True)
class ReconciliationRow:
    request: ApprovalRequest
    requester: str
    payment: Payment | None
    state: str


def reconciliation(
    session: Session,
    *,
    scope: PlayerScope = EVERY_PLAYER,
    state: str = "needs_attention",
    query: str | None = None,
    before: RequestCursor | None = None,
    limit: int = 25,
) -> list[ReconciliationRow]:
    """Withdrawal requests beside their payments, newest first, by reconciliation state."""
    mismatch = _mismatch()
    stmt = (
        select(ApprovalRequest, User.username, Payment, mismatch)
        .join(User, User.id == ApprovalRequest.requester_id)
        .outerjoin(Payment, Payment.id == ApprovalRequest.target)
        .where(ApprovalRequest.action == WITHDRAWAL)
        .order_by(ApprovalRequest.created_at.desc(), ApprovalRequest.id.desc())
        .limit(limit)
    )
    if state == "needs_attention":
        stmt = stmt.where(mismatch.in_(MISMATCHES))
    else:
        stmt = stmt.where(mismatch == state)
    stmt = _where(
        stmt,
        [
            matches_any(query, ApprovalRequest.target),
            created_before(before),
            *scope.request_conditions(with_amount=False),
        ],
    )
    return [ReconciliationRow(*row) for row in session.execute(stmt)]


def reconciliation_counts(session: Session, scope: PlayerScope = EVERY_PLAYER) -> dict[str, int]:
    """How many withdrawal requests are in each reconciliation state."""
    mismatch = _mismatch()
    stmt = (
        select(mismatch, func.count())
        .select_from(ApprovalRequest)
        .outerjoin(Payment, Payment.id == ApprovalRequest.target)
        .where(ApprovalRequest.action == WITHDRAWAL)
        .group_by(mismatch)
    )
    stmt = _where(stmt, scope.request_conditions(with_amount=False))
    counts: dict[str, int] = {name: count for name, count in session.execute(stmt)}
    counts["needs_attention"] = sum(counts.get(name, 0) for name in MISMATCHES)
    return counts


# --- affiliate commissions -----------------------------------------------------------


def _month_of(moment: Any) -> ColumnElement[str]:
    """The calendar month (UTC) of a timestamp, as 'YYYY-MM'."""
    return func.to_char(func.timezone("UTC", moment), "YYYY-MM")


def _monthly_commissions(
    referred_by: ColumnElement[bool], scope: PlayerScope, since: datetime, until: datetime
) -> Subquery:
    """Per affiliate and calendar month from `since` to `until`: the referred players'
    payments and the commission they earn; the one place the commission is computed.

    revshare and hybrid: rate percent of the referred players' net revenue (paid deposits
    less paid withdrawals) in the month, nothing when that is negative (no carry-over);
    cpa: rate per referred player whose first paid deposit falls in the month. Only the
    players in `scope` count, so the figures reveal nothing outside it. `referred_by`
    selects the affiliates, as a condition on `Player.affiliate_id`.
    """
    players = [referred_by, *(c for c in scope.conditions() if c is not None)]
    paid_in_range = (
        select(
            Player.affiliate_id.label("affiliate_id"),
            _month_of(Payment.paid_at).label("month"),
            case((Payment.kind == "deposit", Payment.amount), else_=ZERO).label("deposits"),
            case((Payment.kind == "withdrawal", Payment.amount), else_=ZERO).label("withdrawals"),
            literal(0).label("first_depositors"),
        )
        .join(Player, Player.id == Payment.player_id)
        .where(Payment.status == "paid", Payment.paid_at >= since, Payment.paid_at < until)
        .where(*players)
    )
    first_deposit = (
        select(Player.affiliate_id.label("affiliate_id"), func.min(Payment.paid_at).label("at"))
        .join(Player, Player.id == Payment.player_id)
        .where(Payment.kind == "deposit", Payment.status == "paid", *players)
        .group_by(Player.id, Player.affiliate_id)
        .subquery()
    )
    first_in_range = select(
        first_deposit.c.affiliate_id,
        _month_of(first_deposit.c.at),
        literal(ZERO),
        literal(ZERO),
        literal(1),
    ).where(first_deposit.c.at >= since, first_deposit.c.at < until)
    facts = union_all(paid_in_range, first_in_range).subquery()
    deposits = func.sum(facts.c.deposits)
    withdrawals = func.sum(facts.c.withdrawals)
    first_depositors = func.sum(facts.c.first_depositors)
    amount = case(
        (Affiliate.plan == "cpa", func.round(Affiliate.rate * first_depositors, 2)),
        else_=func.round(Affiliate.rate * func.greatest(deposits - withdrawals, ZERO) / 100, 2),
    )
    return (
        select(
            facts.c.affiliate_id,
            facts.c.month,
            deposits.label("deposits"),
            withdrawals.label("withdrawals"),
            first_depositors.label("first_depositors"),
            amount.label("amount"),
        )
        .join(Affiliate, Affiliate.id == facts.c.affiliate_id)
        .group_by(facts.c.affiliate_id, facts.c.month, Affiliate.plan, Affiliate.rate)
        .subquery()
    )


@dataclass(frozen=True)
class Commission:
    """One affiliate's commission for one calendar month (see _monthly_commissions)."""

    affiliate: Affiliate
    referred_players: int
    deposits: Decimal
    withdrawals: Decimal
    first_depositors: int
    amount: Decimal

    @property
    def net_revenue(self) -> Decimal:
        return self.deposits - self.withdrawals


def commissions(
    session: Session,
    filters: AffiliateFilters,
    *,
    month_start: datetime,
    month_end: datetime,
    scope: PlayerScope = EVERY_PLAYER,
    after: str | None = None,
    limit: int = 25,
) -> list[Commission]:
    """A page of affiliates (by id) with their referred players' payments in the month;
    only the players in `scope` count, so the figures reveal nothing outside it."""
    page = affiliates(session, filters, after=after, limit=limit)
    ids = [affiliate.id for affiliate in page]
    if not ids:
        return []
    players_in_scope = [c for c in scope.conditions() if c is not None]
    referred = dict(
        session.execute(
            select(Player.affiliate_id, func.count())
            .where(Player.affiliate_id.in_(ids), *players_in_scope)
            .group_by(Player.affiliate_id)
        ).all()
    )
    monthly = _monthly_commissions(Player.affiliate_id.in_(ids), scope, month_start, month_end)
    figures = {
        row.affiliate_id: (row.deposits, row.withdrawals, row.first_depositors, row.amount)
        for row in session.execute(select(monthly))
    }
    return [
        Commission(
            affiliate,
            referred.get(affiliate.id, 0),
            *figures.get(affiliate.id, (ZERO, ZERO, 0, ZERO)),
        )
        for affiliate in page
    ]


@dataclass(frozen=True)
class MonthTotal:
    month: str  # YYYY-MM
    affiliates: int  # those earning a commission in the month
    total: Decimal


def commission_totals(
    session: Session,
    filters: AffiliateFilters,
    *,
    since: datetime,
    until: datetime,
    scope: PlayerScope = EVERY_PLAYER,
) -> dict[str, MonthTotal]:
    """Month ('YYYY-MM') → the commission of every affiliate matching `filters` (not one
    page of them), for the months from `since` to `until` that have any."""
    matching = _where(select(Affiliate.id), _affiliate_conditions(filters)).scalar_subquery()
    monthly = _monthly_commissions(Player.affiliate_id.in_(matching), scope, since, until)
    rows = session.execute(
        select(
            monthly.c.month,
            func.count().filter(monthly.c.amount > 0),
            func.sum(monthly.c.amount),
        ).group_by(monthly.c.month)
    )
    return {month: MonthTotal(month, earning, total) for month, earning, total in rows}

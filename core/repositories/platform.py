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
)
from sqlalchemy.orm import Session

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


def affiliates(
    session: Session, filters: AffiliateFilters, *, after: str | None = None, limit: int = 25
) -> list[Affiliate]:
    rows = _page_by_id(
        session,
        select(Affiliate),
        Affiliate.id,
        [
            matches_any(filters.query, Affiliate.id, Affiliate.name),
            _equals(Affiliate.plan, filters.plan),
            _equals(Affiliate.status, filters.status),
        ],
        after,
        limit,
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


@dataclass(frozen=True)
class Commission:
    """One affiliate's commission for one calendar month.

    revshare and hybrid: rate percent of the referred players' net revenue (paid deposits
    less paid withdrawals) in the month, nothing when that is negative (no carry-over);
    cpa: rate per referred player whose first paid deposit falls in the month.
    """

    affiliate: Affiliate
    referred_players: int
    deposits: Decimal
    withdrawals: Decimal
    first_depositors: int

    @property
    def net_revenue(self) -> Decimal:
        return self.deposits - self.withdrawals

    @property
    def amount(self) -> Decimal:
        if self.affiliate.plan == "cpa":
            return (self.affiliate.rate * self.first_depositors).quantize(Decimal("0.01"))
        share = self.affiliate.rate * max(self.net_revenue, ZERO) / 100
        return share.quantize(Decimal("0.01"))


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
    in_month = and_(
        Payment.status == "paid", Payment.paid_at >= month_start, Payment.paid_at < month_end
    )
    flows = {
        affiliate_id: (deposits, withdrawals)
        for affiliate_id, deposits, withdrawals in session.execute(
            select(
                Player.affiliate_id,
                func.coalesce(func.sum(Payment.amount).filter(Payment.kind == "deposit"), ZERO),
                func.coalesce(func.sum(Payment.amount).filter(Payment.kind == "withdrawal"), ZERO),
            )
            .join(Player, Player.id == Payment.player_id)
            .where(Player.affiliate_id.in_(ids), in_month, *players_in_scope)
            .group_by(Player.affiliate_id)
        )
    }
    first_deposit = (
        select(Player.affiliate_id.label("affiliate_id"), func.min(Payment.paid_at).label("first"))
        .join(Player, Player.id == Payment.player_id)
        .where(
            Player.affiliate_id.in_(ids),
            Payment.kind == "deposit",
            Payment.status == "paid",
            *players_in_scope,
        )
        .group_by(Player.id, Player.affiliate_id)
        .subquery()
    )
    newcomers: dict[str, int] = dict(
        session.execute(
            select(first_deposit.c.affiliate_id, func.count())
            .where(first_deposit.c.first >= month_start, first_deposit.c.first < month_end)
            .group_by(first_deposit.c.affiliate_id)
        ).all()
    )
    return [
        Commission(
            affiliate,
            referred.get(affiliate.id, 0),
            *flows.get(affiliate.id, (ZERO, ZERO)),
            newcomers.get(affiliate.id, 0),
        )
        for affiliate in page
    ]

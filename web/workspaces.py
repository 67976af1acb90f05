"""Department workspaces: each lists its entities and opens the request form of its chain.

A workspace is a few sections (players, games, markets ...). A section is shown only to a
viewer holding its view permission, and a row's action link only when the viewer may
request that action and the row's state allows it; whatever is not allowed is absent and
its URL answers 404. Lists filter by GET parameters and continue after a cursor (keyset).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session

from api.deps import RuntimeDep
from core import audit
from core.models import Affiliate, BonusCampaign, Game, Player, RiskRule
from core.repositories import platform as platform_repo
from core.repositories import requests as requests_repo
from core.repositories.scope import PlayerScope
from core.request_service import data_scope
from core.runtime import Runtime
from core.times import parse_utc
from policies.engine import within_scope
from policies.snapshot import DataScope
from web.routes import PAGE_SIZE, Viewer, ViewerDep, WebSessionDep, base_context, render

router = APIRouter(include_in_schema=False)


class BadInput(Exception):
    """A filter or cursor the list cannot use; the message is shown inline."""


# --- filters -------------------------------------------------------------------------

PLAYER_STATUSES = ("active", "suspended", "closed")
VIP_TIERS = ("none", "bronze", "silver", "gold", "platinum")
GAME_CATEGORIES = ("crash", "jackpot", "live", "slots", "table")
MARKET_STATUSES = ("open", "suspended", "settled", "closed")
SPORTS = ("basketball", "esports", "football", "ice_hockey", "tennis")
CAMPAIGN_STATUSES = ("active", "paused", "ended")
AFFILIATE_PLANS = ("revshare", "cpa", "hybrid")
AFFILIATE_STATUSES = ("active", "suspended")
PAYMENT_STATUSES = ("pending", "paid", "declined")
PAYMENT_KINDS = ("deposit", "withdrawal")
PAYMENT_METHODS = ("bank_transfer", "card", "neteller", "skrill", "trustly")
REQUEST_STATUSES = ("pending", "approved", "rejected", "expired", "cancelled", "executed", "failed")
ON_OFF = ("enabled", "disabled")
MAX_SEARCH = 100
MONTH = re.compile(r"^(\d{4})-(\d{2})$")
ENTITY_ID = re.compile(r"^[A-Za-z0-9-]{1,32}$")
LIABILITY = re.compile(r"^-?\d{1,30}(\.\d{1,2})?$")  # a sum of Numeric(18, 2), maybe negative
AUDIT_ID = re.compile(r"^\d{1,18}$")
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
BAD_CURSOR = "That page link is not valid; start again from the first page."
COMMISSION_SUMMARY_MONTHS = 6  # the month listed and the five before it

Choices = Sequence[str] | Callable[[Session, Runtime], Sequence[str]]


@dataclass(frozen=True)
class Filter:
    name: str
    label: str
    choices: Choices | None = None  # None: free text
    kind: str = "text"  # text, select or month

    def options(self, session: Session, rt: Runtime) -> Sequence[str]:
        if self.choices is None:
            return ()
        return self.choices(session, rt) if callable(self.choices) else self.choices


SEARCH = Filter("q", "Search")


def _words(value: str) -> str:
    return value.replace("_", " ")


def _month_bounds(value: str) -> tuple[datetime, datetime]:
    match = MONTH.match(value)
    try:
        if match is None:
            raise ValueError(value)
        year, month = int(match.group(1)), int(match.group(2))
        start = datetime(year, month, 1, tzinfo=UTC)
        end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
    except ValueError:
        raise BadInput("Month must look like 2026-11.") from None
    return start, end


# --- action links --------------------------------------------------------------------


@dataclass(frozen=True)
class Offer:
    """An action that makes sense for a row in its current state, with the form prefilled."""

    action: str
    label: str
    params: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ActionLink:
    label: str
    href: str
    in_progress: bool = False


def _money(value: Decimal) -> str:
    return f"{value:.2f}"


def player_offers(player: Player) -> list[Offer]:
    offers: list[Offer] = []
    if player.status == "active":
        offers.append(Offer("player.suspend", "Suspend"))
    if player.status == "closed":
        return offers
    offers.append(Offer("player.close", "Close account"))
    limit = {"limit": "daily_deposit_limit"}
    if player.daily_deposit_limit is not None:
        limit["value"] = _money(player.daily_deposit_limit)
    offers.append(Offer("player.limit_override", "Override limit", limit))
    # The current tier would be refused; the next one up (down from the top) is likelier.
    tier = VIP_TIERS.index(player.vip_tier) if player.vip_tier in VIP_TIERS else 0
    proposed = VIP_TIERS[tier + 1] if tier + 1 < len(VIP_TIERS) else VIP_TIERS[tier - 1]
    offers.append(Offer("player.vip_change", "Change VIP tier", {"vip_tier": proposed}))
    return offers


def game_offers(game: Game) -> list[Offer]:
    return [
        Offer(
            "game.config_update",
            "Configure",
            {"rtp": _money(game.rtp), "max_bet": str(game.config.get("max_bet", ""))},
        ),
        Offer(
            "game.availability",
            "Disable" if game.enabled else "Enable",
            {"enabled": "disabled" if game.enabled else "enabled"},
        ),
    ]


def ordered_odds(odds: dict[str, Any], order: Sequence[str]) -> list[tuple[str, str]]:
    """Selections in the catalogue's order (home, draw, away ...), not the database's."""
    rank = {selection: index for index, selection in enumerate(order)}
    return [(s, str(odds[s])) for s in sorted(odds, key=lambda s: (rank.get(s, len(rank)), s))]


def selection_order(rt: Runtime) -> Sequence[str]:
    chain = rt.policy.chain_definition("market.odds_adjustment")
    param = chain.params.get("selection") if chain is not None else None
    return param.choices or () if param is not None else ()


def market_offers(row: platform_repo.MarketRow, order: Sequence[str]) -> list[Offer]:
    market = row.market
    if market.status == "suspended":
        return [Offer("market.status", "Reopen", {"status": "open"})]
    if market.status != "open":
        return []
    offers = [Offer("market.status", "Suspend", {"status": "suspended"})]
    if market.odds:
        selection, price = ordered_odds(market.odds, order)[0]
        offers.append(
            Offer(
                "market.odds_adjustment",
                "Adjust odds",
                {"selection": selection, "price": str(price)},
            )
        )
    return offers


def campaign_offers(campaign: BonusCampaign) -> list[Offer]:
    if campaign.status != "active":
        return []
    return [Offer("bonus.budget_change", "Change budget", {"budget": _money(campaign.budget)})]


def affiliate_offers(affiliate: Affiliate) -> list[Offer]:
    if affiliate.status != "active":
        return []
    return [Offer("affiliate.commission_rate", "Change rate", {"rate": _money(affiliate.rate)})]


def risk_rule_offers(rule: RiskRule) -> list[Offer]:
    params = {"enabled": "enabled" if rule.enabled else "disabled"}
    if rule.threshold:
        setting, value = next(iter(rule.threshold.items()))
        params = {"setting": setting, "threshold": str(value), **params}
    return [Offer("risk_rule.change", "Change rule", params)]


def payment_offers(row: platform_repo.PaymentListRow, scope: DataScope) -> list[Offer]:
    payment = row.payment
    if payment.kind != "withdrawal" or payment.status != "pending":
        return []
    if not within_scope(scope, amount=payment.amount):
        return []  # above the viewer's money limit: someone else's payout to ask for
    return [Offer("payment.withdrawal", "Request payout", {"amount": _money(payment.amount)})]


def action_links(
    session: Session, rt: Runtime, viewer: Viewer, offers: dict[str, list[Offer]]
) -> dict[str, list[ActionLink]]:
    """target → its links: those the viewer may request; an open request shows instead."""
    allowed = {
        offer.action
        for row_offers in offers.values()
        for offer in row_offers
        if rt.policy.may_request(viewer.principal, offer.action)
    }
    in_flight = platform_repo.open_requests(session, offers.keys(), allowed)
    links: dict[str, list[ActionLink]] = {}
    for target, row_offers in offers.items():
        links[target] = []
        for offer in row_offers:
            if offer.action not in allowed:
                continue
            request_id = in_flight.get((offer.action, target))
            if request_id is not None:
                links[target].append(
                    ActionLink(
                        f"{offer.label}: approval in progress", f"/requests/{request_id}", True
                    )
                )
                continue
            query = urlencode({"action": offer.action, "target": target, **offer.params})
            links[target].append(ActionLink(offer.label, f"/requests/new?{query}"))
    return links


# --- sections ------------------------------------------------------------------------


@dataclass
class Listing:
    rows: list[Any]
    next_cursor: str | None
    links: dict[str, list[ActionLink]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ListContext:
    session: Session
    rt: Runtime
    viewer: Viewer
    values: dict[str, str]
    cursor: str | None
    page_size: int = PAGE_SIZE
    # False for an export: no action links, totals or other page furniture are worked out.
    for_display: bool = True

    def value(self, name: str) -> str | None:
        return self.values.get(name) or None

    def flag(self, name: str) -> bool | None:
        value = self.value(name)
        return None if value is None else value == "enabled"

    @property
    def scope(self) -> DataScope:
        return data_scope(self.rt, self.viewer.principal)

    def players_in_scope(self) -> PlayerScope:
        return PlayerScope.of(self.scope)

    def id_cursor(self) -> str | None:
        if self.cursor is not None and not ENTITY_ID.match(self.cursor):
            raise BadInput(BAD_CURSOR)
        return self.cursor


def _paged(
    ctx: ListContext,
    rows: list[Any],
    key: Callable[[Any], str],
    offers: Callable[[Any], list[Offer]] | None = None,
) -> Listing:
    """Trim the one extra row fetched to learn whether a next page exists."""
    shown = rows[: ctx.page_size]
    next_cursor = key(shown[-1]) if len(rows) > ctx.page_size else None
    links = {}
    if offers is not None and ctx.for_display:
        links = action_links(ctx.session, ctx.rt, ctx.viewer, {key(r): offers(r) for r in shown})
    return Listing(shown, next_cursor, links)


def list_players(ctx: ListContext) -> Listing:
    filters = platform_repo.PlayerFilters(
        ctx.value("q"),
        ctx.value("status"),
        ctx.value("region"),
        ctx.value("segment"),
        ctx.value("vip_tier"),
    )
    rows = platform_repo.players(
        ctx.session,
        filters,
        scope=ctx.players_in_scope(),
        after=ctx.id_cursor(),
        limit=ctx.page_size + 1,
    )
    return _paged(ctx, rows, lambda p: p.id, player_offers)


def list_games(ctx: ListContext) -> Listing:
    filters = platform_repo.GameFilters(
        ctx.value("q"), ctx.value("provider"), ctx.value("category"), ctx.flag("availability")
    )
    rows = platform_repo.games(ctx.session, filters, after=ctx.id_cursor(), limit=ctx.page_size + 1)
    return _paged(ctx, rows, lambda g: g.id, game_offers)


def list_markets(ctx: ListContext) -> Listing:
    filters = platform_repo.MarketFilters(
        ctx.value("q"), ctx.value("status"), ctx.value("sport"), ctx.value("event")
    )
    rows = platform_repo.markets(
        ctx.session, filters, after=ctx.id_cursor(), limit=ctx.page_size + 1
    )
    order = selection_order(ctx.rt)
    listing = _paged(ctx, rows, lambda r: r.market.id, lambda r: market_offers(r, order))
    if not ctx.for_display:
        return listing
    listing.extra = {
        "odds": {r.market.id: ordered_odds(r.market.odds, order) for r in listing.rows}
    }
    return listing


def _liability_cursor(value: str | None) -> platform_repo.LiabilityCursor | None:
    if value is None:
        return None
    total, _, event_id = value.partition("~")
    if not LIABILITY.match(total) or not ENTITY_ID.match(event_id):
        raise BadInput(BAD_CURSOR)
    return platform_repo.LiabilityCursor(Decimal(total), event_id)


def list_liability(ctx: ListContext) -> Listing:
    rows = platform_repo.liability_by_event(
        ctx.session,
        query=ctx.value("q"),
        sport=ctx.value("sport"),
        after=_liability_cursor(ctx.cursor),
        limit=ctx.page_size + 1,
    )
    return _paged(ctx, rows, lambda r: f"{r.total}~{r.event.id}")


def list_segments(ctx: ListContext) -> Listing:
    return Listing(platform_repo.segments(ctx.session, ctx.players_in_scope()), None)


def list_campaigns(ctx: ListContext) -> Listing:
    filters = platform_repo.CampaignFilters(
        ctx.value("q"), ctx.value("status"), ctx.value("segment")
    )
    rows = platform_repo.campaigns(
        ctx.session, filters, after=ctx.id_cursor(), limit=ctx.page_size + 1
    )
    return _paged(ctx, rows, lambda c: c.id, campaign_offers)


def _affiliate_filters(ctx: ListContext) -> platform_repo.AffiliateFilters:
    return platform_repo.AffiliateFilters(ctx.value("q"), ctx.value("plan"), ctx.value("status"))


def list_affiliates(ctx: ListContext) -> Listing:
    rows = platform_repo.affiliates(
        ctx.session, _affiliate_filters(ctx), after=ctx.id_cursor(), limit=ctx.page_size + 1
    )
    return _paged(ctx, rows, lambda a: a.id, affiliate_offers)


def list_risk_rules(ctx: ListContext) -> Listing:
    filters = platform_repo.RiskRuleFilters(ctx.value("q"), ctx.flag("state"))
    rows = platform_repo.risk_rules(
        ctx.session, filters, after=ctx.id_cursor(), limit=ctx.page_size + 1
    )
    return _paged(ctx, rows, lambda r: r.id, risk_rule_offers)


def list_payments(ctx: ListContext) -> Listing:
    filters = platform_repo.PaymentFilters(
        ctx.value("q"), ctx.value("status"), ctx.value("kind"), ctx.value("method")
    )
    rows = platform_repo.payments(
        ctx.session,
        filters,
        scope=ctx.players_in_scope(),
        after=ctx.id_cursor(),
        limit=ctx.page_size + 1,
    )
    scope = ctx.scope
    return _paged(ctx, rows, lambda r: r.payment.id, lambda r: payment_offers(r, scope))


def _months_up_to(start: datetime, count: int) -> list[str]:
    """'YYYY-MM' of the `count` calendar months ending with the one at `start`, newest first
    (fewer near year 1)."""
    index = start.year * 12 + start.month - 1
    return [f"{i // 12:04d}-{i % 12 + 1:02d}" for i in range(index, max(index - count, 11), -1)]


def _this_month() -> str:
    return datetime.now(UTC).strftime("%Y-%m")


def list_commissions(ctx: ListContext) -> Listing:
    month = ctx.value("month") or _this_month()
    start, end = _month_bounds(month)
    filters = _affiliate_filters(ctx)
    scope = ctx.players_in_scope()
    rows = platform_repo.commissions(
        ctx.session,
        filters,
        month_start=start,
        month_end=end,
        scope=scope,
        after=ctx.id_cursor(),
        limit=ctx.page_size + 1,
    )
    listing = _paged(ctx, rows, lambda c: c.affiliate.id)
    if not ctx.for_display:
        return listing
    months = _months_up_to(start, COMMISSION_SUMMARY_MONTHS)
    totals = platform_repo.commission_totals(
        ctx.session, filters, since=_month_bounds(months[-1])[0], until=end, scope=scope
    )
    other_filters = {name: value for name, value in ctx.values.items() if value and name != "month"}
    listing.links = action_links(
        ctx.session,
        ctx.rt,
        ctx.viewer,
        {c.affiliate.id: affiliate_offers(c.affiliate) for c in listing.rows},
    )
    listing.extra = {
        "month": month,
        "total": sum((c.amount for c in listing.rows), Decimal("0")),
        # (month's total, link that lists that month with the same filters), newest first
        "monthly_totals": [
            (
                totals.get(m) or platform_repo.MonthTotal(m, 0, Decimal("0")),
                "?" + urlencode({"month": m, **other_filters}),
            )
            for m in months
        ],
    }
    return listing


def _request_cursor(value: str | None) -> requests_repo.RequestCursor | None:
    if value is None:
        return None
    moment, _, request_id = value.partition("~")
    try:
        created = datetime.fromisoformat(moment)
        return requests_repo.RequestCursor(created, uuid.UUID(request_id))
    except ValueError:
        raise BadInput(BAD_CURSOR) from None


def _request_key(request: Any) -> str:
    return f"{request.created_at.isoformat()}~{request.id}"


def list_reconciliation(ctx: ListContext) -> Listing:
    scope = ctx.players_in_scope()
    rows = platform_repo.reconciliation(
        ctx.session,
        scope=scope,
        state=ctx.value("state") or "needs_attention",
        query=ctx.value("q"),
        before=_request_cursor(ctx.cursor),
        limit=ctx.page_size + 1,
    )
    listing = _paged(ctx, rows, lambda r: _request_key(r.request))
    if ctx.for_display:
        listing.extra = {"counts": platform_repo.reconciliation_counts(ctx.session, scope)}
    return listing


def list_requests(ctx: ListContext) -> Listing:
    rows = requests_repo.request_page(
        ctx.session,
        requester_id=None,
        scope=ctx.players_in_scope(),
        status=ctx.value("status"),
        action=ctx.value("action"),
        policy_version=ctx.value("policy_version"),
        query=ctx.value("q"),
        before=_request_cursor(ctx.cursor),
        limit=ctx.page_size + 1,
    )
    return _paged(ctx, rows, lambda r: _request_key(r[0]))


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return parse_utc(value)
    except ValueError:
        raise BadInput("Times must look like 2026-11-23T10:00 (UTC).") from None


def list_audit(ctx: ListContext) -> Listing:
    if ctx.cursor is not None and not AUDIT_ID.match(ctx.cursor):
        raise BadInput(BAD_CURSOR)
    since, until = _parse_time(ctx.value("since")), _parse_time(ctx.value("until"))
    if since is not None and until is not None and since >= until:
        raise BadInput("Since must be before until.")
    query = audit.AuditQuery(
        stream=ctx.value("stream"),
        actor=ctx.value("actor"),
        sensitivity=ctx.value("sensitivity"),
        since=since,
        until=until,
        before_id=int(ctx.cursor) if ctx.cursor is not None else None,
        limit=ctx.page_size + 1,
        scope=ctx.players_in_scope(),
    )
    return _paged(ctx, audit.search(ctx.session, query), lambda e: str(e.id))


@dataclass(frozen=True)
class Section:
    key: str
    title: str
    permission: str
    load: Callable[[ListContext], Listing]
    filters: tuple[Filter, ...] = ()
    # Applied when the parameter is absent (an empty value means "any"); a callable is
    # asked at each request (e.g. the current month).
    defaults: dict[str, str | Callable[[], str]] = field(default_factory=dict)
    # Needed beyond `permission` to download the whole list as CSV.
    export_permission: str | None = None

    def may_export(self, rt: Runtime, viewer: Viewer) -> bool:
        extra = self.export_permission
        return extra is None or bool(rt.policy.authorize(viewer.principal, extra))


def _providers(session: Session, rt: Runtime) -> Sequence[str]:
    return platform_repo.providers(session)


def _regions(session: Session, rt: Runtime) -> Sequence[str]:
    return sorted(rt.policy.roles.regions)


def _segments(session: Session, rt: Runtime) -> Sequence[str]:
    return sorted(rt.policy.roles.segments)


def _policy_versions(session: Session, rt: Runtime) -> Sequence[str]:
    return platform_repo.policy_versions(session)


def _actions(session: Session, rt: Runtime) -> Sequence[str]:
    return rt.policy.actions


SECTIONS: dict[str, Section] = {
    section.key: section
    for section in (
        Section(
            "players",
            "players",
            "players:view",
            list_players,
            (
                SEARCH,
                Filter("status", "Status", PLAYER_STATUSES),
                Filter("region", "Region", _regions),
                Filter("segment", "Segment", _segments),
                Filter("vip_tier", "VIP tier", VIP_TIERS),
            ),
        ),
        Section(
            "games",
            "games",
            "games:view",
            list_games,
            (
                SEARCH,
                Filter("provider", "Provider", _providers),
                Filter("category", "Category", GAME_CATEGORIES),
                Filter("availability", "Availability", ON_OFF),
            ),
        ),
        Section(
            "markets",
            "markets",
            "markets:view",
            list_markets,
            (
                SEARCH,
                Filter("status", "Status", MARKET_STATUSES),
                Filter("sport", "Sport", SPORTS),
                Filter("event", "Event id"),
            ),
        ),
        Section(
            "liability",
            "liability by event",
            "markets:view",
            list_liability,
            (SEARCH, Filter("sport", "Sport", SPORTS)),
        ),
        Section("segments", "segments", "players:view", list_segments),
        Section(
            "campaigns",
            "bonus campaigns",
            "campaigns:view",
            list_campaigns,
            (
                SEARCH,
                Filter("status", "Status", CAMPAIGN_STATUSES),
                Filter("segment", "Segment", _segments),
            ),
        ),
        Section(
            "affiliates",
            "affiliates",
            "affiliates:view",
            list_affiliates,
            (
                SEARCH,
                Filter("plan", "Plan", AFFILIATE_PLANS),
                Filter("status", "Status", AFFILIATE_STATUSES),
            ),
        ),
        Section(
            "risk_rules",
            "risk rules",
            "risk_rules:view",
            list_risk_rules,
            (SEARCH, Filter("state", "State", ON_OFF)),
        ),
        Section(
            "payments",
            "payments",
            "payments:view",
            list_payments,
            (
                SEARCH,
                Filter("status", "Status", PAYMENT_STATUSES),
                Filter("kind", "Kind", PAYMENT_KINDS),
                Filter("method", "Method", PAYMENT_METHODS),
            ),
            {"status": "pending", "kind": "withdrawal"},
        ),
        Section(
            "reconciliation",
            "approved vs executed",
            "reconciliation:view",
            list_reconciliation,
            (
                Filter("state", "Reconciliation", platform_repo.RECONCILIATION_STATES),
                Filter("q", "Payment id"),
            ),
            {"state": "needs_attention"},
        ),
        Section(
            "commissions",
            "affiliate commissions",
            "commissions:view",
            list_commissions,
            (
                Filter("month", "Month", kind="month"),
                SEARCH,
                Filter("plan", "Plan", AFFILIATE_PLANS),
                Filter("status", "Status", AFFILIATE_STATUSES),
            ),
            defaults={"month": _this_month},
        ),
        Section(
            "audit",
            "audit trail",
            "audit:view",
            list_audit,
            (
                Filter("stream", "Stream"),
                Filter("actor", "Actor"),
                Filter("sensitivity", "Sensitivity", audit.SENSITIVITY_LEVELS, kind="select"),
                Filter("since", "Since (UTC)", kind="datetime-local"),
                Filter("until", "Until (UTC)", kind="datetime-local"),
            ),
            export_permission="audit:export",
        ),
        Section(
            "requests",
            "requests by status",
            "requests:view_all",
            list_requests,
            (
                Filter("q", "Target or request id"),
                Filter("status", "Status", REQUEST_STATUSES),
                Filter("action", "Action", _actions),
                Filter("policy_version", "Policy version", _policy_versions),
            ),
        ),
    )
}

WORKSPACE_SECTIONS: dict[str, tuple[str, ...]] = {
    "operations": ("players", "games", "markets"),
    "crm": ("segments", "campaigns", "affiliates", "players"),
    "risk": ("risk_rules", "players"),
    "finance": ("payments", "reconciliation", "commissions"),
    "compliance": ("audit", "requests"),
    "trading": ("markets", "liability"),
}


def visible_sections(rt: Runtime, viewer: Viewer, key: str) -> list[Section]:
    return [
        SECTIONS[name]
        for name in WORKSPACE_SECTIONS.get(key, ())
        if rt.policy.authorize(viewer.principal, SECTIONS[name].permission)
    ]


def find_section(rt: Runtime, viewer: Viewer, key: str, section_key: str) -> Section | None:
    """The section, when it is in a workspace of the viewer's and they may view it."""
    if key not in dict(viewer.workspaces):
        return None
    return next((s for s in visible_sections(rt, viewer, key) if s.key == section_key), None)


# --- the page ------------------------------------------------------------------------


def _not_found(request: Request, viewer: Viewer) -> Response:
    return render(
        request,
        "error.html",
        {**base_context(viewer, ""), "message": "Page not found."},
        status_code=404,
    )


@dataclass(frozen=True)
class FilterField:
    """One control of the filter form, as the template draws it."""

    name: str
    label: str
    kind: str
    value: str
    options: tuple[tuple[str, str], ...] = ()


def read_filters(
    request: Request, section: Section, session: Session, rt: Runtime
) -> tuple[dict[str, str], list[FilterField], list[str]]:
    values: dict[str, str] = {}
    fields: list[FilterField] = []
    problems: list[str] = []
    for spec in section.filters:
        raw = request.query_params.get(spec.name)
        default = section.defaults.get(spec.name, "")
        if raw is None and callable(default):
            default = default()
        value = (str(default) if raw is None else raw).strip()
        options = spec.options(session, rt)
        if spec.choices is not None and value and value not in options:
            listed = ", ".join(map(_words, options)) or "(none yet)"
            problems.append(f"{spec.label} must be one of: {listed}.")
        elif len(value) > MAX_SEARCH:
            problems.append(f"{spec.label} is longer than {MAX_SEARCH} characters.")
        elif CONTROL_CHARACTERS.search(value):
            problems.append(f"{spec.label} contains control characters.")
        else:
            values[spec.name] = value
        kind = "select" if options or spec.choices is not None else spec.kind
        fields.append(
            FilterField(spec.name, spec.label, kind, value, tuple((o, _words(o)) for o in options))
        )
    return values, fields, problems


@router.get("/w/{key}")
@router.get("/w/{key}/{section_key}")
def workspace(
    request: Request,
    key: str,
    viewer: ViewerDep,
    rt: RuntimeDep,
    session: WebSessionDep,
    section_key: str | None = None,
) -> Response:
    workspaces = dict(viewer.workspaces)
    if key not in workspaces:
        return _not_found(request, viewer)
    sections = visible_sections(rt, viewer, key)
    if section_key is None:
        section = sections[0] if sections else None
    else:
        section = find_section(rt, viewer, key, section_key)
        if section is None:
            return _not_found(request, viewer)
    context: dict[str, Any] = {
        **base_context(viewer, key),
        "key": key,
        "workspace_title": workspaces[key],
        "sections": sections,
        "section": section,
        "show_cases": key == "risk" and bool(rt.policy.authorize(viewer.principal, "cases:view")),
    }
    if section is None:
        return render(request, "ws_page.html", context)
    values, fields, problems = read_filters(request, section, session, rt)
    cursor = request.query_params.get("after") or None
    listing = Listing([], None)
    if not problems:
        try:
            listing = section.load(ListContext(session, rt, viewer, values, cursor))
        except BadInput as err:
            problems.append(str(err))
    base = f"/w/{key}/{section.key}"
    kept = {name: value for name, value in values.items() if value or name in section.defaults}
    context.update(
        fields=fields,
        error=" ".join(problems) or None,
        listing=listing,
        rows=listing.rows,
        links=listing.links,
        base=base,
        next_link=(
            f"{base}?{urlencode({**kept, 'after': listing.next_cursor})}"
            if listing.next_cursor
            else None
        ),
        first_link=f"{base}?{urlencode(kept)}" if cursor else None,
        export_link=(
            f"{base}/export.csv?{urlencode(kept)}"
            if not problems and section.may_export(rt, viewer)
            else None
        ),
        **listing.extra,
    )
    return render(request, "ws_page.html", context, status_code=422 if problems else 200)

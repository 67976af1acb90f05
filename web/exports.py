"""Download a workspace list as CSV: every row its filters match, on all pages.

An export runs the section's own loader (the same scoped SQL as the page) batch after
batch inside one repeatable-read transaction, so the file is one consistent snapshot and
holds exactly what the viewer could page through. Some sections need a permission
beyond viewing (the audit trail: `audit:export`). The audit store records every export,
with its filters, before the first row is sent.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session

from api.deps import (
    EXPORTS_BUSY_RETRY_SECONDS,
    CsvDownload,
    RuntimeDep,
    origin_of,
    take_export_slot,
)
from core import denials
from core.exports import (
    AUDIT_COLUMNS,
    EXPORT_BATCH,
    Column,
    as_json,
    csv_stream,
    read_in_batches,
    record_export,
    row_id,
)
from core.runtime import Runtime
from web.routes import Viewer, ViewerDep, WebSessionDep, base_context, render
from web.workspaces import BadInput, ListContext, Section, find_section, read_filters

router = APIRouter(include_in_schema=False)


COLUMNS: dict[str, tuple[Column, ...]] = {
    "players": (
        Column("player_id", row_id),
        Column("username", lambda p: p.username),
        Column("status", lambda p: p.status),
        Column("region", lambda p: p.region),
        Column("segment", lambda p: p.segment),
        Column("vip_tier", lambda p: p.vip_tier),
        Column("daily_deposit_limit", lambda p: p.daily_deposit_limit),
        Column("daily_loss_limit", lambda p: p.daily_loss_limit),
        Column("session_limit_minutes", lambda p: p.session_limit_minutes),
        Column("affiliate_id", lambda p: p.affiliate_id),
        Column("created_at", lambda p: p.created_at),
    ),
    "games": (
        Column("game_id", row_id),
        Column("name", lambda g: g.name),
        Column("provider", lambda g: g.provider),
        Column("category", lambda g: g.category),
        Column("rtp_percent", lambda g: g.rtp),
        Column("max_bet", lambda g: g.config.get("max_bet")),
        Column("enabled", lambda g: g.enabled),
    ),
    "markets": (
        Column("market_id", lambda r: r.market.id),
        Column("market", lambda r: r.market.name),
        Column("event_id", lambda r: r.event.id),
        Column("event", lambda r: r.event.name),
        Column("sport", lambda r: r.event.sport),
        Column("starts_at", lambda r: r.event.starts_at),
        Column("status", lambda r: r.market.status),
        Column("odds", lambda r: as_json(r.market.odds)),
        Column("liability", lambda r: r.market.liability),
    ),
    "liability": (
        Column("event_id", lambda r: r.event.id),
        Column("event", lambda r: r.event.name),
        Column("sport", lambda r: r.event.sport),
        Column("starts_at", lambda r: r.event.starts_at),
        Column("markets", lambda r: r.markets),
        Column("open_markets", lambda r: r.open_markets),
        Column("largest_market_liability", lambda r: r.largest),
        Column("total_liability", lambda r: r.total),
    ),
    "segments": (
        Column("segment", lambda s: s.segment),
        Column("players", lambda s: s.players),
        Column("active_players", lambda s: s.active_players),
        Column("active_campaigns", lambda s: s.campaigns),
        Column("campaign_budget", lambda s: s.budget),
        Column("spent", lambda s: s.spend),
    ),
    "campaigns": (
        Column("campaign_id", row_id),
        Column("name", lambda c: c.name),
        Column("segment", lambda c: c.segment),
        Column("status", lambda c: c.status),
        Column("budget", lambda c: c.budget),
        Column("spent", lambda c: c.spend),
        Column("starts_at", lambda c: c.starts_at),
        Column("ends_at", lambda c: c.ends_at),
    ),
    "affiliates": (
        Column("affiliate_id", row_id),
        Column("name", lambda a: a.name),
        Column("plan", lambda a: a.plan),
        Column("rate", lambda a: a.rate),
        Column("status", lambda a: a.status),
    ),
    "risk_rules": (
        Column("rule_id", row_id),
        Column("name", lambda r: r.name),
        Column("description", lambda r: r.description),
        Column("thresholds", lambda r: as_json(r.threshold)),
        Column("enabled", lambda r: r.enabled),
    ),
    "payments": (
        Column("payment_id", lambda r: r.payment.id),
        Column("player_id", lambda r: r.player.id),
        Column("player", lambda r: r.player.username),
        Column("region", lambda r: r.player.region),
        Column("kind", lambda r: r.payment.kind),
        Column("method", lambda r: r.payment.method),
        Column("amount", lambda r: r.payment.amount),
        Column("currency", lambda r: r.payment.currency),
        Column("status", lambda r: r.payment.status),
        Column("created_at", lambda r: r.payment.created_at),
        Column("paid_at", lambda r: r.payment.paid_at),
    ),
    "reconciliation": (
        Column("request_id", lambda r: r.request.id),
        Column("payment_id", lambda r: r.request.target),
        Column("requested_by", lambda r: r.requester),
        Column("request_status", lambda r: r.request.status),
        Column("payment_status", lambda r: r.payment.status if r.payment else "no such payment"),
        Column("approved_amount", lambda r: r.request.amount),
        Column("payment_amount", lambda r: r.payment.amount if r.payment else None),
        Column("finding", lambda r: r.state),
        Column("outcome", lambda r: r.request.outcome),
        Column("updated_at", lambda r: r.request.updated_at),
    ),
    "commissions": (
        Column("affiliate_id", lambda c: c.affiliate.id),
        Column("affiliate", lambda c: c.affiliate.name),
        Column("plan", lambda c: c.affiliate.plan),
        Column("rate", lambda c: c.affiliate.rate),
        Column("referred_players", lambda c: c.referred_players),
        Column("deposits", lambda c: c.deposits),
        Column("paid_withdrawals", lambda c: c.withdrawals),
        Column("net_revenue", lambda c: c.net_revenue),
        Column("first_deposits", lambda c: c.first_depositors),
        Column("commission", lambda c: c.amount),
    ),
    "audit": AUDIT_COLUMNS,
    "requests": (
        Column("request_id", lambda r: r[0].id),
        Column("action", lambda r: r[0].action),
        Column("target", lambda r: r[0].target),
        Column("amount", lambda r: r[0].amount),
        Column("region", lambda r: r[0].region),
        Column("segment", lambda r: r[0].segment),
        Column("requested_by", lambda r: r[1]),
        Column("status", lambda r: r[0].status),
        Column("policy_version", lambda r: r[0].policy_version),
        Column("created_at", lambda r: r[0].created_at),
        Column("completed_at", lambda r: r[0].completed_at),
        Column("outcome", lambda r: r[0].outcome),
    ),
}


def _rows(rt: Runtime, viewer: Viewer, section: Section, values: dict[str, str]) -> Iterator[Any]:
    def batch(session: Session, cursor: str | None) -> tuple[list[Any], str | None]:
        ctx = ListContext(
            session, rt, viewer, values, cursor, page_size=EXPORT_BATCH, for_display=False
        )
        listing = section.load(ctx)
        return listing.rows, listing.next_cursor

    return read_in_batches(rt.sessions, batch)


def _refused(request: Request, viewer: Viewer, message: str, status: int) -> Response:
    return render(
        request,
        "error.html",
        {**base_context(viewer, ""), "message": message},
        status_code=status,
    )


@router.get("/w/{key}/{section_key}/export.csv")
def export_section(
    request: Request,
    key: str,
    section_key: str,
    viewer: ViewerDep,
    rt: RuntimeDep,
    session: WebSessionDep,
) -> Response:
    section = find_section(rt, viewer, key, section_key)
    if section is None:
        return _refused(request, viewer, "Page not found.", 404)
    origin = origin_of(request, "web")
    if section.export_permission is not None:
        verdict = rt.policy.authorize(viewer.principal, section.export_permission)
        if not verdict:
            denials.record_denial(
                rt, viewer.principal, section.export_permission, verdict.reason, origin
            )
            message = f"Your roles do not allow exporting the {section.title}."
            return _refused(request, viewer, message, 403)
    values, _, problems = read_filters(request, section, session, rt)
    if problems:
        return _refused(request, viewer, " ".join(problems), 422)
    try:  # a filter the loader refuses (a month like 2026-13) is refused before auditing
        section.load(ListContext(session, rt, viewer, values, None, 1, for_display=False))
    except BadInput as err:
        return _refused(request, viewer, str(err), 422)
    session.rollback()
    release = take_export_slot(request)
    if release is None:
        message = "Other exports are still downloading; try again in a minute."
        busy = _refused(request, viewer, message, 429)
        busy.headers["Retry-After"] = str(EXPORTS_BUSY_RETRY_SECONDS)
        return busy
    try:
        record_export(
            session,
            actor=viewer.principal.username,
            origin=origin,
            what=f"section:{section.key}",
            filters={name: value for name, value in values.items() if value},
        )
        session.commit()
        chunks = csv_stream(COLUMNS[section.key], _rows(rt, viewer, section, values))
        return CsvDownload(section.key.replace("_", "-"), chunks, release)
    except BaseException:
        release()
        raise

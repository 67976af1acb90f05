"""Search the audit store, and export what a search matches."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import Response, StreamingResponse

from api.deps import (
    EXPORTS_BUSY_RETRY_SECONDS,
    CallerDep,
    CsvDownload,
    RuntimeDep,
    SessionDep,
    origin_of,
    require,
    take_export_slot,
)
from api.schemas import AuditEventOut, Page, audit_event_out
from core import audit
from core.exports import AUDIT_COLUMNS, audit_rows, csv_stream, record_export
from core.repositories.scope import PlayerScope
from core.request_service import data_scope

router = APIRouter(prefix="/api/v1", tags=["audit"])


@dataclass(frozen=True)
class AuditFilters:
    stream: str | None
    actor: str | None
    sensitivity: str | None
    since: datetime | None
    until: datetime | None

    def query(
        self, scope: PlayerScope, before_id: int | None = None, limit: int = 50
    ) -> audit.AuditQuery:
        return audit.AuditQuery(
            stream=self.stream,
            actor=self.actor,
            sensitivity=self.sensitivity,
            since=self.since,
            until=self.until,
            before_id=before_id,
            limit=limit,
            scope=scope,
        )

    def as_dict(self) -> dict[str, str]:
        return {
            name: value.isoformat() if isinstance(value, datetime) else value
            for name, value in vars(self).items()
            if value is not None
        }


def audit_filters(
    stream: Annotated[str | None, Query(max_length=128, examples=["request:<id>"])] = None,
    actor: Annotated[str | None, Query(max_length=128)] = None,
    sensitivity: Annotated[
        Literal["low", "normal", "high", "security"] | None,
        Query(
            description="only events of this sensitivity; security: sign-ins, MFA, "
            "sessions, keys, role and permission changes"
        ),
    ] = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> AuditFilters:
    """`since` is inclusive, `until` exclusive; both need a timezone."""
    for name, value in (("since", since), ("until", until)):
        if value is not None and value.tzinfo is None:
            raise HTTPException(422, f"{name} must include a timezone, e.g. 2026-11-23T10:00:00Z")
    if since and until and since >= until:
        raise HTTPException(422, "since must be before until")
    return AuditFilters(stream, actor, sensitivity, since, until)


AuditFiltersDep = Annotated[AuditFilters, Depends(audit_filters)]


@router.get("/audit", response_model=Page[AuditEventOut])
def search_audit(
    caller: CallerDep,
    rt: RuntimeDep,
    session: SessionDep,
    filters: AuditFiltersDep,
    cursor: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
):
    """Newest first. `since` is inclusive, `until` exclusive; both need a timezone.

    A caller whose data scope is narrowed to some regions or segments sees only the events
    of requests within it (a request outside it reads as an empty stream)."""
    require(rt, caller.principal, "audit:view")
    scope = PlayerScope.of(data_scope(rt, caller.principal))
    events = audit.search(session, filters.query(scope, before_id=cursor, limit=limit + 1))
    next_cursor = str(events[limit - 1].id) if len(events) > limit else None
    return Page[AuditEventOut](items=[audit_event_out(e) for e in events[:limit]], next=next_cursor)


@router.get(
    "/audit/export",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}, "description": "every matching event"}},
)
def export_audit(
    request: Request,
    caller: CallerDep,
    rt: RuntimeDep,
    session: SessionDep,
    filters: AuditFiltersDep,
) -> Response:
    """Every event the filters match, newest first, as CSV with its hashes (for checking
    against the chain), from one consistent snapshot. Needs `audit:export`; the export
    itself is recorded in the audit store, with its filters, before the first row is sent.
    The data scope narrows it as it narrows the search."""
    require(rt, caller.principal, "audit:view")
    require(rt, caller.principal, "audit:export")
    release = take_export_slot(request)
    if release is None:
        raise HTTPException(
            429,
            "other exports are still downloading; try again in a minute",
            headers={"Retry-After": str(EXPORTS_BUSY_RETRY_SECONDS)},
        )
    try:
        record_export(
            session,
            actor=caller.principal.username,
            origin=origin_of(request, "api"),
            what="audit",
            filters=filters.as_dict(),
            api_key=caller.api_key.prefix if caller.api_key is not None else None,
        )
        session.commit()
        query = filters.query(PlayerScope.of(data_scope(rt, caller.principal)))
        return CsvDownload(
            "audit", csv_stream(AUDIT_COLUMNS, audit_rows(rt.sessions, query)), release
        )
    except BaseException:
        release()
        raise

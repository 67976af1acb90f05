"""Search the audit store."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query

from api.deps import CallerDep, RuntimeDep, SessionDep, require
from api.schemas import AuditEventOut, Page, audit_event_out
from core import audit
from core.repositories.scope import PlayerScope
from core.request_service import data_scope

router = APIRouter(prefix="/api/v1", tags=["audit"])


@router.get("/audit", response_model=Page[AuditEventOut])
def search_audit(
    caller: CallerDep,
    rt: RuntimeDep,
    session: SessionDep,
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
    cursor: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
):
    """Newest first. `since` is inclusive, `until` exclusive; both need a timezone.

    A caller whose data scope is narrowed to some regions or segments sees only the events
    of requests within it (a request outside it reads as an empty stream)."""
    require(rt, caller.principal, "audit:view")
    for name, value in (("since", since), ("until", until)):
        if value is not None and value.tzinfo is None:
            raise HTTPException(422, f"{name} must include a timezone, e.g. 2026-11-23T10:00:00Z")
    if since and until and since >= until:
        raise HTTPException(422, "since must be before until")
    events = audit.search(
        session,
        audit.AuditQuery(
            stream=stream,
            actor=actor,
            sensitivity=sensitivity,
            since=since,
            until=until,
            before_id=cursor,
            limit=limit + 1,
            scope=PlayerScope.of(data_scope(rt, caller.principal)),
        ),
    )
    next_cursor = str(events[limit - 1].id) if len(events) > limit else None
    return Page[AuditEventOut](items=[audit_event_out(e) for e in events[:limit]], next=next_cursor)

"""Department workspaces: each lists its entities and opens the request form of its chain."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import Response

from api.deps import RuntimeDep
from core import audit
from core.repositories import payments as payments_repo
from core.repositories import requests as requests_repo
from web.routes import PAGE_SIZE, Viewer, ViewerDep, WebSessionDep, base_context, render

router = APIRouter(include_in_schema=False)


def _workspace_or_404(request: Request, viewer: Viewer, key: str) -> Response | None:
    if key not in {k for k, _ in viewer.workspaces}:
        return render(
            request,
            "error.html",
            {**base_context(viewer, ""), "message": "Page not found."},
            status_code=404,
        )
    return None


@router.get("/w/finance")
def finance_workspace(
    request: Request,
    viewer: ViewerDep,
    rt: RuntimeDep,
    session: WebSessionDep,
    after: str | None = None,
) -> Response:
    refused = _workspace_or_404(request, viewer, "finance")
    if refused is not None:
        return refused
    rows = payments_repo.page(
        session, status="pending", kind="withdrawal", after_id=after, limit=PAGE_SIZE + 1
    )
    return render(
        request,
        "finance.html",
        {
            **base_context(viewer, "finance"),
            "rows": rows[:PAGE_SIZE],
            "next": rows[PAGE_SIZE - 1].payment.id if len(rows) > PAGE_SIZE else None,
            "can_request": bool(rt.policy.may_request(viewer.principal, "payment.withdrawal")),
        },
    )


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@router.get("/w/compliance")
def compliance_workspace(
    request: Request,
    viewer: ViewerDep,
    rt: RuntimeDep,
    session: WebSessionDep,
    stream: str = "",
    actor: str = "",
    since: str = "",
    until: str = "",
    before: str = "",
) -> Response:
    refused = _workspace_or_404(request, viewer, "compliance")
    if refused is not None:
        return refused
    filters = {"stream": stream, "actor": actor, "since": since, "until": until}
    error = None
    events: list[Any] = []
    try:
        query = audit.AuditQuery(
            stream=stream.strip() or None,
            actor=actor.strip() or None,
            since=_parse_time(since),
            until=_parse_time(until),
            before_id=int(before) if before else None,
            limit=PAGE_SIZE + 1,
        )
        events = audit.search(session, query)
    except ValueError:
        error = "Times must look like 2026-11-23T10:00 (UTC), and the cursor must be a number."
    next_link = None
    if len(events) > PAGE_SIZE:
        next_link = "?" + urlencode({**filters, "before": events[PAGE_SIZE - 1].id})
    return render(
        request,
        "compliance.html",
        {
            **base_context(viewer, "compliance"),
            "events": events[:PAGE_SIZE],
            "filters": filters,
            "error": error,
            "next_link": next_link,
        },
        status_code=422 if error else 200,
    )


@router.get("/w/{key}")
def department_workspace(
    request: Request, key: str, viewer: ViewerDep, rt: RuntimeDep, session: WebSessionDep
) -> Response:
    """Departments whose catalogue actions arrive later show their requests and open tasks."""
    refused = _workspace_or_404(request, viewer, key)
    if refused is not None:
        return refused
    title = dict(viewer.workspaces)[key]
    rows = requests_repo.request_page(session, requester_id=viewer.user.id, limit=50)
    department_actions = [
        name
        for name in rt.policy.actions
        if (chain := rt.policy.chain_definition(name)) is not None and chain.department == key
    ]
    return render(
        request,
        "workspace.html",
        {
            **base_context(viewer, key),
            "title": title,
            "rows": [r for r in rows if r[0].action in department_actions],
            "actions": department_actions,
        },
    )

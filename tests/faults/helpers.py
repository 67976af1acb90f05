"""Driving requests through the API while workers and servers come and go."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Callable

import httpx
from sqlalchemy import select

from core.db import SessionFactory
from core.models import ApprovalRequest, AuditEvent, Decision
from tests.api.test_withdrawal_slice import decide, submit
from tests.conftest import Tokens

__all__ = [
    "approve",
    "decide",
    "eventually",
    "request_for",
    "status",
    "submit",
    "submitted",
]


async def eventually(check: Callable[[], object], what: str, timeout: float = 30) -> object:
    """Poll `check` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.1)


def status(sessions: SessionFactory, request_id: str) -> tuple[str, int]:
    """(status, current step) of the request in the read model."""
    with sessions() as session:
        request = session.get(ApprovalRequest, uuid.UUID(request_id))
        assert request is not None
        return request.status, request.current_step


def request_for(sessions: SessionFactory, payment_id: str) -> str | None:
    with sessions() as session:
        found = session.execute(
            select(ApprovalRequest.id).where(ApprovalRequest.target == payment_id)
        ).scalars()
        ids = [str(i) for i in found]
    assert len(ids) <= 1, f"{payment_id} has {len(ids)} requests"
    return ids[0] if ids else None


def decided(sessions: SessionFactory, request_id: str) -> int:
    with sessions() as session:
        return len(
            session.execute(
                select(Decision.id).where(Decision.request_id == uuid.UUID(request_id))
            ).all()
        )


def audit_count(sessions: SessionFactory, request_id: str) -> int:
    with sessions() as session:
        return len(
            session.execute(
                select(AuditEvent.id).where(AuditEvent.stream == f"request:{request_id}")
            ).all()
        )


async def submitted(api: httpx.AsyncClient, tokens: Tokens, payment_id: str) -> str:
    response = await submit(api, tokens, payment_id)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def approve(
    api: httpx.AsyncClient, tokens: Tokens, user: str, request_id: str, *, retried: bool = False
) -> dict:
    """One approval. `retried`: the person saw a 503 before and tries again after reloading,
    so finding their decision already recorded (409) is an answer too."""
    response = await decide(api, tokens, user, request_id)
    allowed = (200, 409) if retried else (200,)
    assert response.status_code in allowed, response.text
    if response.status_code == 409:  # recorded before: "already decided", "decisions are closed"
        assert re.search(r"already|closed", response.json()["detail"]), response.text
    return dict(response.json())

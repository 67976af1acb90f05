"""Delegations API: an approver names a peer for a period."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/api/v1", tags=["delegations"])

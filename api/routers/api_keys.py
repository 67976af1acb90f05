"""API keys for integrations: issue, list, revoke."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/api/v1", tags=["api-keys"])

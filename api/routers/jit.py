"""Just-in-time elevation API: request, renew and revoke temporary roles."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/api/v1", tags=["jit"])

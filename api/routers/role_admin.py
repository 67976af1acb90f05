"""Role administration: versioned role changes through the system-change chain, with what-if."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/api/v1", tags=["role-admin"])

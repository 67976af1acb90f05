"""Roles catalogue API: what each role may see and do, and its data scope."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/api/v1", tags=["roles"])

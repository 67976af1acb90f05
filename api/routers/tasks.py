"""Task queue API: my queue, my team's, claim, release, bulk decisions."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/api/v1", tags=["tasks"])

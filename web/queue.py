"""The task queue pages: mine and my team's, claim and release, bulk decisions."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(include_in_schema=False)

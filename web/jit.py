"""Just-in-time elevation pages: my grants, every active elevation, history."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(include_in_schema=False)

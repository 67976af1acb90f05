"""Role administration pages: roles as data, a what-if before every change."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(include_in_schema=False)

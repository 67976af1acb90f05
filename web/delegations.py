"""Delegation pages: name a peer to approve in your place for a period."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(include_in_schema=False)

"""Account pages: my sessions, MFA enrolment; the admin view of everyone's sessions."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(include_in_schema=False)

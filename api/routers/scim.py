"""SCIM 2.0 provisioning: Users and Groups for an identity provider."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/scim/v2", tags=["scim"])

"""Single sign-on: OIDC login and callback; LDAP sign-in goes through the login form."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(include_in_schema=False)

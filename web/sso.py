"""Single sign-on: OIDC login and callback; LDAP sign-in goes through the login form."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import RedirectResponse, Response

from api.deps import RuntimeDep, origin_of
from core import auth, sso_oidc
from core.identity import identity_map_of, provision
from core.runtime import Runtime
from core.security import new_token
from web.routes import LOGIN_CSRF_COOKIE, render, safe_next, set_session_cookie


@asynccontextmanager
async def _identity_policy_checked(app: FastAPI) -> AsyncIterator[None]:
    """A bad policies/identity.yaml stops start-up, naming the file and the key."""
    identity_map_of(app.state.runtime)
    yield


router = APIRouter(include_in_schema=False, lifespan=_identity_policy_checked)
PENDING_COOKIE = "bo_sso_pending"
CALLBACK_PATH = "/sso/oidc/callback"


def _sso_configured(rt: Runtime) -> None:
    if not rt.settings.oidc_enabled:
        raise HTTPException(404, "single sign-on is not configured")


def _refused(request: Request, rt: Runtime, message: str, status_code: int) -> Response:
    """The sign-in page again, saying why; the half-done single sign-on is forgotten."""
    token = new_token()
    next_url = sso_oidc.pending_next(rt.settings, request.cookies.get(PENDING_COOKIE))
    response = render(
        request,
        "login.html",
        {"csrf_token": token, "next": safe_next(next_url), "sso": True, "error": message},
        status_code=status_code,
    )
    response.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict", path="/login")
    response.delete_cookie(PENDING_COOKIE, path="/sso")
    return response


def _callback_url(request: Request) -> str:
    return str(request.base_url).rstrip("/") + CALLBACK_PATH


@router.get("/sso/oidc/login")
async def oidc_login(request: Request, rt: RuntimeDep, next: str | None = None) -> Response:
    """Off to the identity provider, with state, nonce and a PKCE challenge."""
    _sso_configured(rt)
    try:
        started = await asyncio.to_thread(
            sso_oidc.start, rt.settings, _callback_url(request), safe_next(next)
        )
    except sso_oidc.SsoError as exc:
        return _refused(request, rt, f"Single sign-on is unavailable: {exc}.", 503)
    response = RedirectResponse(started.authorization_url, status_code=303)
    # Lax, not strict: the provider's redirect back is a cross-site top-level navigation.
    response.set_cookie(
        PENDING_COOKIE,
        started.pending_cookie,
        max_age=sso_oidc.PENDING_SECONDS,
        httponly=True,
        samesite="lax",
        secure=rt.settings.cookie_secure,
        path="/sso",
    )
    return response


@router.get(CALLBACK_PATH)
async def oidc_callback(request: Request, rt: RuntimeDep) -> Response:
    """The provider's answer: verified, then the person provisioned and signed in."""
    _sso_configured(rt)
    params = {key: value for key, value in request.query_params.items()}
    pending = request.cookies.get(PENDING_COOKIE)
    origin = origin_of(request, "web")

    def sign_in() -> tuple[auth.NewWebSession, str] | Response:
        try:
            person = sso_oidc.finish(rt.settings, pending, params, _callback_url(request))
        except (sso_oidc.SsoError, auth.AccessRefused) as exc:
            return _refused(request, rt, f"Single sign-on failed: {exc}.", 400)
        with rt.sessions() as session:
            try:
                user = provision(session, identity_map_of(rt), person, origin)
            except auth.AccessRefused as exc:
                session.commit()  # the audited refusal (and any roles taken away)
                return _refused(request, rt, f"Access refused: {exc}.", 403)
            mfa_at = person.mfa_at
            auth.complete_login(session, user, origin, mfa=mfa_at is not None)
            opened = auth.open_web_session(
                session, rt.settings, user, origin, mfa_verified_at=mfa_at
            )
            session.commit()
        return opened, sso_oidc.pending_next(rt.settings, pending) or "/tasks"

    outcome = await asyncio.to_thread(sign_in)
    if isinstance(outcome, Response):
        return outcome
    opened, next_url = outcome
    response = RedirectResponse(safe_next(next_url), status_code=303)
    set_session_cookie(response, rt, opened)
    response.delete_cookie(PENDING_COOKIE, path="/sso")
    return response

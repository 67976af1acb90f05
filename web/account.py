"""Account pages: the sign-in code step, MFA enrolment and step-up, my sessions; the admin
view of everyone's sessions and sign-in lockouts."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session

from api.deps import PathRowId, RuntimeDep, origin_of
from core import auth
from core.models import User
from core.repositories import sessions as sessions_repo
from core.repositories import users as users_repo
from core.runtime import Runtime
from core.security import token_digest
from web.routes import (
    AnyStageViewerDep,
    FormDep,
    Viewer,
    ViewerDep,
    base_context,
    csrf_checked_form,
    render,
    safe_next,
    set_session_cookie,
)

router = APIRouter(include_in_schema=False)
MANAGE_SESSIONS = "sessions:manage"
T = TypeVar("T")


def _me(session: Session, viewer: Viewer) -> User:
    user = session.get(User, viewer.user.id)
    assert user is not None
    return user


def _in_transaction(rt: Runtime, work: Callable[[Session], T]) -> T | auth.AuthError:
    """Run `work` and commit, also when it refuses (to keep audited failures and lockouts)."""
    with rt.sessions() as session:
        try:
            result = work(session)
        except auth.AuthError as refused:
            session.commit()
            return refused
        session.commit()
        return result


def _refusal_status(refused: auth.AuthError) -> int:
    return 429 if isinstance(refused, auth.LoginThrottled) else 401


# --- the code after the password -------------------------------------------------------


@router.get("/login/mfa")
def code_form(request: Request, viewer: AnyStageViewerDep, next: str | None = None) -> Response:
    if viewer.stage != auth.AWAITING_CODE:
        return RedirectResponse(safe_next(next), status_code=303)
    context = {"mode": "code", "csrf_token": viewer.csrf_token, "next": safe_next(next)}
    return render(request, "login.html", context)


@router.post("/login/mfa")
async def code_submit(request: Request, viewer: AnyStageViewerDep, rt: RuntimeDep) -> Response:
    form = await csrf_checked_form(request, viewer)
    next_url = safe_next(form.get("next"))
    if viewer.stage != auth.AWAITING_CODE:
        return RedirectResponse(next_url, status_code=303)
    origin = origin_of(request, "web")

    def check(session: Session) -> auth.NewWebSession:
        me = _me(session, viewer)
        auth.verify_code(session, rt.settings, me, form.get("totp", ""), origin, "login")
        web_session = sessions_repo.by_token_hash(session, token_digest(viewer.cookie))
        assert web_session is not None
        return auth.activate_web_session(session, rt.settings, me, web_session, origin)

    outcome = await asyncio.to_thread(_in_transaction, rt, check)
    if isinstance(outcome, auth.AuthError):
        context = {
            "mode": "code",
            "csrf_token": viewer.csrf_token,
            "next": next_url,
            "error": f"{str(outcome).capitalize()}.",
        }
        return render(request, "login.html", context, status_code=_refusal_status(outcome))
    response = RedirectResponse(next_url, status_code=303)
    set_session_cookie(response, rt, outcome)
    return response


# --- enrolment -------------------------------------------------------------------------


def _mfa_context(viewer: Viewer, **extra: Any) -> dict[str, Any]:
    # A person who must enrol first sees no navigation: there is nowhere else to go yet.
    active = viewer.stage == auth.ACTIVE
    return {
        **base_context(viewer, "account"),
        "viewer": viewer if active else None,
        "csrf_token": viewer.csrf_token,
        "must_enrol": viewer.stage == auth.MUST_ENROL,
        **extra,
    }


@router.get("/account/mfa")
def mfa_page(request: Request, viewer: AnyStageViewerDep, rt: RuntimeDep) -> Response:
    if viewer.stage == auth.AWAITING_CODE:
        return RedirectResponse("/login/mfa", status_code=303)
    with rt.sessions() as session:
        me = _me(session, viewer)
        enabled_at = me.mfa_enabled_at if auth.mfa_enrolled(me) else None
    return render(request, "account_mfa.html", _mfa_context(viewer, enabled_at=enabled_at))


@router.post("/account/mfa/start")
async def mfa_start(request: Request, viewer: AnyStageViewerDep, rt: RuntimeDep) -> Response:
    """A new secret, shown on this response only (it is stored encrypted, never shown again)."""
    await csrf_checked_form(request, viewer)
    if viewer.stage == auth.AWAITING_CODE:
        return RedirectResponse("/login/mfa", status_code=303)
    outcome = await asyncio.to_thread(
        _in_transaction,
        rt,
        lambda session: auth.begin_enrolment(session, rt.settings, _me(session, viewer)),
    )
    if isinstance(outcome, auth.AuthError):
        context = _mfa_context(viewer, error=f"{str(outcome).capitalize()}.")
        return render(request, "account_mfa.html", context, status_code=409)
    return render(request, "account_mfa.html", _mfa_context(viewer, enrolment=outcome))


@router.post("/account/mfa/confirm")
async def mfa_confirm(request: Request, viewer: AnyStageViewerDep, rt: RuntimeDep) -> Response:
    form = await csrf_checked_form(request, viewer)
    if viewer.stage == auth.AWAITING_CODE:
        return RedirectResponse("/login/mfa", status_code=303)
    origin = origin_of(request, "web")

    def confirm(session: Session) -> auth.NewWebSession | None:
        me = _me(session, viewer)
        web_session = sessions_repo.by_token_hash(session, token_digest(viewer.cookie))
        assert web_session is not None
        auth.confirm_enrolment(session, rt.settings, me, form.get("totp", ""), origin, web_session)
        if viewer.stage == auth.MUST_ENROL:
            return auth.activate_web_session(session, rt.settings, me, web_session, origin)
        return None

    outcome = await asyncio.to_thread(_in_transaction, rt, confirm)
    if isinstance(outcome, auth.AuthError):
        context = _mfa_context(viewer, confirm_error=f"{str(outcome).capitalize()}.")
        return render(request, "account_mfa.html", context, _refusal_status(outcome))
    target = "/tasks" if viewer.stage == auth.MUST_ENROL else "/account/mfa"
    response = RedirectResponse(target, status_code=303)
    if outcome is not None:
        set_session_cookie(response, rt, outcome)
    return response


# --- step-up ---------------------------------------------------------------------------


@router.get("/account/verify")
def verify_page(request: Request, viewer: ViewerDep, next: str | None = None) -> Response:
    context = {**base_context(viewer, "account"), "next": safe_next(next)}
    return render(request, "account_verify.html", context)


@router.post("/account/verify")
async def verify_submit(
    request: Request, viewer: ViewerDep, form: FormDep, rt: RuntimeDep
) -> Response:
    """A fresh code before a high-risk approval (valid for STEP_UP_MINUTES)."""
    next_url = safe_next(form.get("next"))
    origin = origin_of(request, "web")

    def check(session: Session) -> None:
        me = _me(session, viewer)
        if not auth.mfa_enrolled(me):
            raise auth.AuthError("set up multi-factor authentication first")
        auth.verify_code(session, rt.settings, me, form.get("totp", ""), origin, "step_up")
        auth.record_step_up(session, me, origin, "web")
        web_session = sessions_repo.by_token_hash(session, token_digest(viewer.cookie))
        assert web_session is not None  # the viewer's session was live a moment ago
        web_session.mfa_verified_at = me.mfa_verified_at

    outcome = await asyncio.to_thread(_in_transaction, rt, check)
    if isinstance(outcome, auth.AuthError):
        context = {
            **base_context(viewer, "account"),
            "next": next_url,
            "error": f"{str(outcome).capitalize()}.",
        }
        return render(request, "account_verify.html", context, _refusal_status(outcome))
    return RedirectResponse(next_url, status_code=303)


# --- sessions --------------------------------------------------------------------------


def _device(user_agent: str | None) -> str:
    """A short name for a browser from its user agent (the full string is in a tooltip)."""
    if not user_agent:
        return "unknown device"
    for marker, name in (
        ("Edg/", "Edge"),
        ("Chrome/", "Chrome"),
        ("Firefox/", "Firefox"),
        ("Safari/", "Safari"),
    ):
        if marker in user_agent:
            for system in ("Windows", "Mac OS X", "Android", "iPhone", "Linux"):
                if system in user_agent:
                    return f"{name} on {system.replace('Mac OS X', 'macOS')}"
            return name
    return user_agent[:40]


def _rows(rows: list[sessions_repo.SessionRow], viewer: Viewer) -> list[dict[str, Any]]:
    return [
        {
            "id": row.session.id,
            "username": row.username,
            "display_name": row.display_name,
            "device": _device(row.session.user_agent),
            "user_agent": row.session.user_agent or "",
            "ip": row.session.ip or "unknown",
            "created_at": row.session.created_at,
            "last_seen_at": row.session.last_seen_at,
            "expires_at": row.session.expires_at,
            "current": row.session.id == viewer.session_id,
            "state": {
                auth.ACTIVE: "signed in",
                auth.AWAITING_CODE: "waiting for code",
                auth.MUST_ENROL: "setting up MFA",
            }.get(row.session.stage, row.session.stage),
        }
        for row in rows
    ]


@router.get("/account/sessions")
def my_sessions(request: Request, viewer: ViewerDep, rt: RuntimeDep) -> Response:
    with rt.sessions() as session:
        rows = sessions_repo.live_sessions(session, datetime.now(UTC), user_id=viewer.user.id)
    context = {
        **base_context(viewer, "account"),
        "rows": _rows(rows, viewer),
        "idle_minutes": rt.settings.session_idle_minutes,
        "limit": rt.settings.max_sessions_per_user,
        "manages_sessions": bool(rt.policy.authorize(viewer.principal, MANAGE_SESSIONS)),
    }
    return render(request, "account_sessions.html", context)


def _revoke(
    request: Request, viewer: Viewer, rt: Runtime, session_id: int, anyone: bool
) -> auth.AuthError | None:
    origin = origin_of(request, "web")

    def revoke(session: Session) -> None:
        auth.revoke_session(session, session_id, _me(session, viewer), origin, anyone=anyone)

    outcome = _in_transaction(rt, revoke)
    return outcome if isinstance(outcome, auth.AuthError) else None


@router.post("/account/sessions/{session_id}/revoke")
async def revoke_mine(
    request: Request, session_id: PathRowId, viewer: ViewerDep, form: FormDep, rt: RuntimeDep
) -> Response:
    refused = await asyncio.to_thread(_revoke, request, viewer, rt, session_id, False)
    if refused is not None:
        return render(
            request,
            "error.html",
            {**base_context(viewer, "account"), "message": f"{str(refused).capitalize()}."},
            status_code=404,
        )
    if session_id == viewer.session_id:
        return RedirectResponse("/login", status_code=303)
    return RedirectResponse("/account/sessions", status_code=303)


# --- administration --------------------------------------------------------------------


def _forbidden(request: Request, viewer: Viewer, rt: Runtime) -> Response | None:
    verdict = rt.policy.authorize(viewer.principal, MANAGE_SESSIONS)
    if verdict:
        return None
    context = {**base_context(viewer, "admin_sessions"), "message": verdict.reason}
    return render(request, "error.html", context, status_code=403)


def _admin_page(
    request: Request,
    viewer: Viewer,
    rt: Runtime,
    username: str,
    message: str | None = None,
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    with rt.sessions() as session:
        user_id = None
        if username:
            found = users_repo.by_username(session, username)
            user_id = found.id if found else -1
        rows = sessions_repo.live_sessions(session, datetime.now(UTC), user_id=user_id)
        failing = auth.failing_usernames(session, rt.settings)
    context = {
        **base_context(viewer, "admin_sessions"),
        "rows": _rows(rows, viewer),
        "failing": failing,
        "filter": username,
        "message": message,
        "error": error,
        "max_failures": rt.settings.login_max_failures,
    }
    return render(request, "account_admin_sessions.html", context, status_code=status_code)


@router.get("/admin/sessions")
def admin_sessions(request: Request, viewer: ViewerDep, rt: RuntimeDep, user: str = "") -> Response:
    return _forbidden(request, viewer, rt) or _admin_page(request, viewer, rt, user.strip()[:64])


@router.post("/admin/sessions/{session_id}/revoke")
async def admin_revoke(
    request: Request, session_id: PathRowId, viewer: ViewerDep, form: FormDep, rt: RuntimeDep
) -> Response:
    forbidden = _forbidden(request, viewer, rt)
    if forbidden is not None:
        return forbidden
    refused = await asyncio.to_thread(_revoke, request, viewer, rt, session_id, True)
    if refused is not None:
        return await asyncio.to_thread(
            _admin_page, request, viewer, rt, "", None, f"{str(refused).capitalize()}.", 404
        )
    return RedirectResponse(
        "/admin/sessions?" + urlencode({"user": form.get("user", "")}), status_code=303
    )


@router.post("/admin/lockouts/clear")
async def admin_unlock(
    request: Request, viewer: ViewerDep, form: FormDep, rt: RuntimeDep
) -> Response:
    forbidden = _forbidden(request, viewer, rt)
    if forbidden is not None:
        return forbidden
    username = form.get("username", "").strip()[:64]
    origin = origin_of(request, "web")

    def clear() -> int:
        with rt.sessions() as session:
            cleared = auth.unlock(session, username, viewer.user.username, origin)
            session.commit()
            return cleared

    cleared = await asyncio.to_thread(clear) if username else 0
    if not cleared:
        error = (
            f"No failed sign-ins to clear for “{username}”." if username else "Enter a username."
        )
        return await asyncio.to_thread(_admin_page, request, viewer, rt, "", None, error, 404)
    message = f"Unlocked {username}: {cleared} failed sign-ins no longer count."
    return await asyncio.to_thread(_admin_page, request, viewer, rt, "", message)

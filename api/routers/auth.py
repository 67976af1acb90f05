"""Token issue and refresh for API clients; who am I; clearing a sign-in lockout."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request, status

from api.deps import CallerDep, RuntimeDep, SessionDep, origin_of, require
from api.schemas import MeOut, RefreshRequest, TokenRequest, TokenResponse, scope_out
from core import auth, identity
from core.repositories import users as users_repo

router = APIRouter(prefix="/api/v1", tags=["auth"])
MANAGE_SESSIONS = "sessions:manage"


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, message, headers={"WWW-Authenticate": "Bearer"}
    )


def _refusal(exc: auth.AuthError) -> HTTPException:
    if isinstance(exc, auth.LoginThrottled):
        return HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            str(exc),
            headers={"Retry-After": str(exc.retry_after)},
        )
    if isinstance(exc, auth.AccessRefused):  # the directory vouched, but no group maps
        return HTTPException(status.HTTP_403_FORBIDDEN, str(exc))
    if isinstance(exc, identity.DirectoryUnavailable):
        return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc))
    return _unauthorized(str(exc))


@router.post("/auth/token", response_model=TokenResponse)
def create_token(body: TokenRequest, request: Request, session: SessionDep, rt: RuntimeDep):
    """Exchange a username and password (and `totp`, once MFA is set up) for tokens.

    Too many failures lock the username (and throttle the address): 429 with Retry-After.
    """
    origin = origin_of(request, "api")
    try:
        signed_in = auth.sign_in(
            session,
            rt.settings,
            rt.policy,
            body.username,
            body.password,
            body.totp,
            origin,
            identity.ldap_directory(rt),
        )
    except auth.AuthError as exc:
        session.commit()  # keep the audited failure and any lockout
        raise _refusal(exc) from None
    session.commit()
    if signed_in.stage == auth.AWAITING_CODE:
        raise _unauthorized('authenticator code required: send it as "totp"')
    if signed_in.stage == auth.MUST_ENROL:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            "your role requires multi-factor authentication: set it up at /account/mfa "
            "in the web console first",
        )
    # An enrolled person reaching here gave a right code just now.
    mfa_at = signed_in.user.mfa_verified_at if auth.mfa_enrolled(signed_in.user) else None
    pair = auth.issue_tokens(session, rt.settings, signed_in.user, mfa_at=mfa_at)
    session.commit()
    return TokenResponse(
        access_token=pair.access_token, refresh_token=pair.refresh_token, expires_in=pair.expires_in
    )


@router.post("/auth/refresh", response_model=TokenResponse)
def refresh_token(body: RefreshRequest, request: Request, session: SessionDep, rt: RuntimeDep):
    """Rotate a refresh token. A token used twice revokes every token of its login."""
    try:
        pair = auth.rotate_refresh_token(
            session, rt.settings, body.refresh_token, origin_of(request, "api")
        )
    except auth.AuthError as exc:
        session.commit()  # keep the revocation of a reused family
        raise _unauthorized(str(exc)) from None
    session.commit()
    return TokenResponse(
        access_token=pair.access_token, refresh_token=pair.refresh_token, expires_in=pair.expires_in
    )


@router.delete("/auth/lockouts/{username}", status_code=204)
def clear_lockout(
    username: Annotated[str, Path(min_length=1, max_length=64)],
    request: Request,
    caller: CallerDep,
    session: SessionDep,
    rt: RuntimeDep,
):
    """Unlock a username: its failed sign-ins stop counting (sessions:manage)."""
    require(rt, caller.principal, MANAGE_SESSIONS)
    cleared = auth.unlock(session, username, caller.user.username, origin_of(request, "api"))
    if not cleared:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"no failed sign-ins to clear for {username}"
        )
    session.commit()


@router.post("/auth/users/{username}/end-sign-ins", status_code=204)
def end_sign_ins(
    username: Annotated[str, Path(min_length=1, max_length=64)],
    request: Request,
    caller: CallerDep,
    session: SessionDep,
    rt: RuntimeDep,
):
    """End every browser session and refresh-token family of a person (sessions:manage).

    Access tokens already issued stay valid until they expire (ACCESS_TOKEN_MINUTES).
    """
    require(rt, caller.principal, MANAGE_SESSIONS)
    user = users_repo.by_username(session, username)
    if user is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no such user: {username}")
    origin = origin_of(request, "api")
    reason = "revoked by administrator"
    auth.end_other_sign_ins(session, user, origin, reason, caller.user.username)
    session.commit()


@router.get("/me", response_model=MeOut)
def me(caller: CallerDep, rt: RuntimeDep):
    return MeOut(
        id=caller.user.id,
        username=caller.user.username,
        display_name=caller.user.display_name,
        department=caller.user.department,
        roles=sorted(caller.principal.roles),
        workspaces=[key for key, _ in rt.policy.workspaces_for(caller.principal)],
        scope=scope_out(rt.policy.scope_of(caller.principal)),
    )

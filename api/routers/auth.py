"""Token issue and refresh for API clients; who am I."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, status

from api.deps import CallerDep, RuntimeDep, SessionDep, origin_of
from api.schemas import MeOut, RefreshRequest, TokenRequest, TokenResponse, scope_out
from core.auth import AuthError, authenticate, issue_tokens, rotate_refresh_token

router = APIRouter(prefix="/api/v1", tags=["auth"])


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, message, headers={"WWW-Authenticate": "Bearer"}
    )


@router.post("/auth/token", response_model=TokenResponse)
def create_token(body: TokenRequest, request: Request, session: SessionDep, rt: RuntimeDep):
    """Exchange a username and password for an access token and a refresh token."""
    try:
        user = authenticate(session, body.username, body.password, origin_of(request, "api"))
    except AuthError as exc:
        session.commit()  # keep the audited failure
        raise _unauthorized(str(exc)) from None
    pair = issue_tokens(session, rt.settings, user)
    session.commit()
    return TokenResponse(
        access_token=pair.access_token, refresh_token=pair.refresh_token, expires_in=pair.expires_in
    )


@router.post("/auth/refresh", response_model=TokenResponse)
def refresh_token(body: RefreshRequest, request: Request, session: SessionDep, rt: RuntimeDep):
    """Rotate a refresh token. A token used twice revokes every token of its login."""
    try:
        pair = rotate_refresh_token(
            session, rt.settings, body.refresh_token, origin_of(request, "api")
        )
    except AuthError as exc:
        session.commit()  # keep the revocation of a reused family
        raise _unauthorized(str(exc)) from None
    session.commit()
    return TokenResponse(
        access_token=pair.access_token, refresh_token=pair.refresh_token, expires_in=pair.expires_in
    )


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

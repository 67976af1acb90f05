"""Authentication: passwords, bearer tokens (forged, expired, misused), refresh rotation, CSRF.

Each refusal is checked from the outside (status code and message) and from the inside
(what was, or was not, written: audit events, refresh tokens, web sessions, requests).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jose import jwt
from sqlalchemy import func, select, update

from api.app import create_app
from core.db import SessionFactory
from core.models import ApprovalRequest, AuditEvent, RefreshToken, User, WebSession
from core.security import ACCESS, JWT_AUDIENCE, JWT_ISSUER, REFRESH, encode_token
from core.settings import Settings
from tests.conftest import HIDDEN_CSRF

PASSWORD = "backoffice"


# --- helpers --------------------------------------------------------------------------


def user_id(sessions: SessionFactory, username: str) -> int:
    with sessions() as session:
        return session.execute(select(User.id).where(User.username == username)).scalar_one()


def audit_count(sessions: SessionFactory, stream: str, action: str | None = None) -> int:
    with sessions() as session:
        query = select(func.count()).select_from(AuditEvent).where(AuditEvent.stream == stream)
        if action is not None:
            query = query.where(AuditEvent.action == action)
        return session.execute(query).scalar_one()


def last_audit_event(sessions: SessionFactory, stream: str, action: str) -> AuditEvent:
    with sessions() as session:
        event = session.execute(
            select(AuditEvent)
            .where(AuditEvent.stream == stream, AuditEvent.action == action)
            .order_by(AuditEvent.seq.desc())
            .limit(1)
        ).scalar_one()
        session.expunge(event)
        return event


def refresh_token_count(sessions: SessionFactory, uid: int) -> int:
    with sessions() as session:
        return session.execute(
            select(func.count()).select_from(RefreshToken).where(RefreshToken.user_id == uid)
        ).scalar_one()


def web_session_count(sessions: SessionFactory, uid: int) -> int:
    with sessions() as session:
        return session.execute(
            select(func.count()).select_from(WebSession).where(WebSession.user_id == uid)
        ).scalar_one()


def b64url(data: dict[str, Any]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def claims_for(uid: int, **overrides: Any) -> dict[str, Any]:
    now = int(datetime.now(UTC).timestamp())
    return {
        "sub": str(uid),
        "typ": ACCESS,
        "jti": secrets.token_hex(16),
        "iss": JWT_ISSUER,
        "aud": JWT_AUDIENCE,
        "iat": now,
        "exp": now + 600,
        **overrides,
    }


def secret(settings: Settings) -> str:
    return settings.secret_key.get_secret_value()


async def login(api: httpx.AsyncClient, username: str, password: str = PASSWORD) -> dict:
    response = await api.post(
        "/api/v1/auth/token", json={"username": username, "password": password}
    )
    assert response.status_code == 200, response.text
    return response.json()


async def me(api: httpx.AsyncClient, token: str) -> httpx.Response:
    return await api.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})


async def refresh(api: httpx.AsyncClient, token: str) -> httpx.Response:
    return await api.post("/api/v1/auth/refresh", json={"refresh_token": token})


def refused(response: httpx.Response, message: str) -> None:
    """401, a JSON detail containing `message`, and a bearer challenge."""
    assert response.status_code == 401, (response.status_code, response.text)
    assert message in response.json()["detail"], response.text
    assert response.headers["www-authenticate"].startswith("Bearer")


# --- passwords ------------------------------------------------------------------------


async def test_wrong_password_is_401_and_audited(api, sessions):
    stream = "user:fin.clerk"
    uid = user_id(sessions, "fin.clerk")
    failed_before = audit_count(sessions, stream, "auth.login_failed")
    logins_before = audit_count(sessions, stream, "auth.login")
    tokens_before = refresh_token_count(sessions, uid)

    response = await api.post(
        "/api/v1/auth/token", json={"username": "fin.clerk", "password": "guess"}
    )
    refused(response, "wrong username or password")
    assert "access_token" not in response.json()

    assert audit_count(sessions, stream, "auth.login_failed") == failed_before + 1
    event = last_audit_event(sessions, stream, "auth.login_failed")
    assert event.actor == "fin.clerk"
    assert event.channel == "api"
    assert event.sensitivity == "security"
    assert event.after == {"reason": "password"}
    assert "guess" not in json.dumps(event.after)
    assert audit_count(sessions, stream, "auth.login") == logins_before
    assert refresh_token_count(sessions, uid) == tokens_before


async def test_unknown_user_is_401_with_the_same_message(api, sessions):
    response = await api.post(
        "/api/v1/auth/token", json={"username": "nobody.here", "password": PASSWORD}
    )
    # Same words as a wrong password: the answer does not reveal which usernames exist.
    refused(response, "wrong username or password")
    assert audit_count(sessions, "user:nobody.here") == 0


@pytest.mark.parametrize("username", ["fin.clerk\x00", "fin\x00clerk"], ids=["nul", "inner-nul"])
async def test_username_with_control_characters_is_refused_as_input(api, sessions, username: str):
    response = await api.post(
        "/api/v1/auth/token", json={"username": username, "password": PASSWORD}
    )
    assert response.status_code == 422, response.text
    assert "control characters" in response.json()["detail"]


async def test_username_with_a_newline_is_a_wrong_username(api):
    response = await api.post(
        "/api/v1/auth/token", json={"username": "fin.clerk\n", "password": PASSWORD}
    )
    refused(response, "wrong username or password")


@pytest.mark.parametrize(
    "body",
    [
        {"username": "fin.clerk"},
        {"password": PASSWORD},
        {"username": "", "password": PASSWORD},
        {"username": "fin.clerk", "password": PASSWORD, "role": "admin"},
        {"username": ["fin.clerk"], "password": PASSWORD},
    ],
    ids=["no-password", "no-username", "empty-username", "extra-field", "list-username"],
)
async def test_malformed_login_body_is_422(api, body: dict[str, Any]):
    response = await api.post("/api/v1/auth/token", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"]
    assert "access_token" not in response.json()


# --- bearer tokens --------------------------------------------------------------------


async def test_missing_token_is_401(api):
    response = await api.get("/api/v1/me")
    refused(response, "missing bearer token")


@pytest.mark.parametrize(
    "authorization",
    ["Basic Zm9vOmJhcg==", "Bearer", "Bearer ", "Token abc"],
    ids=["basic", "bearer-only", "bearer-empty", "other-scheme"],
)
async def test_no_usable_bearer_token_is_401(api, authorization: str):
    response = await api.get("/api/v1/me", headers={"Authorization": authorization})
    refused(response, "missing bearer token")


@pytest.mark.parametrize("token", ["garbage", "a.b.c", "a.b", "...", "eyJ.eyJ.sig"], ids=str)
async def test_malformed_token_is_401(api, token: str):
    refused(await me(api, token), "invalid or expired token")


async def test_crafted_token_with_the_right_key_works(api, sessions, settings):
    """Control for the forgeries below: a token built the same way but valid is accepted."""
    uid = user_id(sessions, "fin.clerk")
    token, _ = encode_token(
        secret(settings), user_id=uid, token_type=ACCESS, lifetime=timedelta(minutes=5)
    )
    response = await me(api, token)
    assert response.status_code == 200, response.text
    assert response.json()["username"] == "fin.clerk"
    by_hand = jwt.encode(claims_for(uid), secret(settings), algorithm="HS256")
    assert (await me(api, by_hand)).json()["username"] == "fin.clerk"


async def test_expired_access_token_is_401(api, sessions, settings):
    uid = user_id(sessions, "fin.clerk")
    token, _ = encode_token(
        secret(settings), user_id=uid, token_type=ACCESS, lifetime=timedelta(minutes=-5)
    )
    refused(await me(api, token), "invalid or expired token")


async def test_alg_none_token_is_401(api, sessions):
    uid = user_id(sessions, "admin")
    for alg in ("none", "None", "NONE"):
        token = f"{b64url({'alg': alg, 'typ': 'JWT'})}.{b64url(claims_for(uid))}."
        refused(await me(api, token), "invalid or expired token")


async def test_hs512_token_with_the_right_key_is_401(api, sessions, settings):
    token = jwt.encode(claims_for(user_id(sessions, "admin")), secret(settings), algorithm="HS512")
    refused(await me(api, token), "invalid or expired token")


async def test_rs256_tokens_are_401_whoever_signed_them(api, sessions, settings):
    """HS/RS confusion: a token claiming RS256 is refused, signed with an RSA key or with
    our HMAC secret (the attack where a verifier uses its key for whatever alg is named)."""
    claims = claims_for(user_id(sessions, "admin"))
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    refused(await me(api, jwt.encode(claims, pem.decode(), algorithm="RS256")), "invalid")
    signing_input = f"{b64url({'alg': 'RS256', 'typ': 'JWT'})}.{b64url(claims)}"
    mac = hmac.new(secret(settings).encode(), signing_input.encode(), hashlib.sha256).digest()
    confused = f"{signing_input}.{base64.urlsafe_b64encode(mac).decode().rstrip('=')}"
    refused(await me(api, confused), "invalid or expired token")


async def test_token_signed_with_another_key_is_401(api, sessions):
    token = jwt.encode(
        claims_for(user_id(sessions, "admin")), "another-key-" + "y" * 40, algorithm="HS256"
    )
    refused(await me(api, token), "invalid or expired token")


async def test_tampered_payload_is_401(api, sessions, settings):
    """A valid token whose payload is swapped for another user's keeps its old signature."""
    clerk = jwt.encode(
        claims_for(user_id(sessions, "fin.clerk")), secret(settings), algorithm="HS256"
    )
    header, _, signature = clerk.split(".")
    forged = f"{header}.{b64url(claims_for(user_id(sessions, 'admin')))}.{signature}"
    refused(await me(api, forged), "invalid or expired token")


@pytest.mark.parametrize(
    "overrides",
    [
        {"aud": "someone-else"},
        {"iss": "someone-else"},
        {"typ": "something"},
        {"sub": "not-a-number"},
        {"sub": str(10**6)},
    ],
    ids=["audience", "issuer", "type", "subject", "unknown-user"],
)
async def test_token_with_wrong_claims_is_401(api, sessions, settings, overrides):
    claims = claims_for(user_id(sessions, "admin"), **overrides)
    token = jwt.encode(claims, secret(settings), algorithm="HS256")
    refused(await me(api, token), "invalid or expired token")


@pytest.mark.parametrize("missing", ["exp", "sub", "jti", "iss", "typ"])
async def test_token_missing_a_required_claim_is_401(api, sessions, settings, missing: str):
    claims = claims_for(user_id(sessions, "admin"))
    del claims[missing]
    token = jwt.encode(claims, secret(settings), algorithm="HS256")
    refused(await me(api, token), "invalid or expired token")


async def test_token_without_audience_is_401(api, sessions, settings):
    claims = claims_for(user_id(sessions, "admin"))
    del claims["aud"]
    token = jwt.encode(claims, secret(settings), algorithm="HS256")
    refused(await me(api, token), "invalid or expired token")


async def test_refresh_token_is_not_an_access_token(api):
    pair = await login(api, "risk.analyst")
    refused(await me(api, pair["refresh_token"]), "invalid or expired token")
    # ... and the access token cannot be used to refresh.
    refused(await refresh(api, pair["access_token"]), "invalid refresh token")
    assert (await me(api, pair["access_token"])).status_code == 200


# --- refresh rotation -----------------------------------------------------------------


async def test_refresh_rotates_the_pair(api, sessions):
    first = await login(api, "risk.analyst")
    second_response = await refresh(api, first["refresh_token"])
    assert second_response.status_code == 200, second_response.text
    second = second_response.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    assert second["token_type"] == "bearer" and second["expires_in"] > 0
    assert (await me(api, second["access_token"])).json()["username"] == "risk.analyst"

    # The new refresh token rotates again; the chain stays one family.
    third_response = await refresh(api, second["refresh_token"])
    assert third_response.status_code == 200, third_response.text
    third = third_response.json()
    families = set()
    for token in (first, second, third):
        claims = jwt.get_unverified_claims(token["refresh_token"])
        families.add(claims["fam"])
    assert len(families) == 1

    # The old one is refused.
    refused(await refresh(api, first["refresh_token"]), "already used")


async def test_reusing_a_refresh_token_revokes_its_whole_family(api, sessions):
    stream = "user:risk.lead"
    first = await login(api, "risk.lead")
    family = jwt.get_unverified_claims(first["refresh_token"])["fam"]
    other_login = await login(api, "risk.lead")  # another family of the same user
    second = (await refresh(api, first["refresh_token"])).json()
    reuse_before = audit_count(sessions, stream, "auth.refresh_reuse")

    # Someone replays the first (already used) refresh token.
    replay = await refresh(api, first["refresh_token"])
    refused(replay, "already used")
    assert "revoked" in replay.json()["detail"]

    # The newer refresh token, issued to the legitimate holder, stops working too.
    refused(await refresh(api, second["refresh_token"]), "invalid refresh token")

    assert audit_count(sessions, stream, "auth.refresh_reuse") == reuse_before + 1
    event = last_audit_event(sessions, stream, "auth.refresh_reuse")
    assert event.sensitivity == "security"
    assert event.actor == "risk.lead"
    assert event.after == {"family": family}

    with sessions() as session:
        rows = session.execute(
            select(RefreshToken.revoked_at).where(RefreshToken.family_id == family)
        ).all()
    assert len(rows) == 2 and all(row.revoked_at is not None for row in rows)

    # Another login's family is untouched.
    assert (await refresh(api, other_login["refresh_token"])).status_code == 200


def issued_days_ago(sessions: SessionFactory, refresh_token: str, days: int) -> None:
    jti = jwt.get_unverified_claims(refresh_token)["jti"]
    with sessions() as session:
        session.execute(
            update(RefreshToken)
            .where(RefreshToken.jti == jti)
            .values(created_at=func.now() - timedelta(days=days))
        )
        session.commit()


async def test_rotation_stops_at_the_family_age_limit(api, sessions, settings):
    limit = settings.refresh_family_days
    first = await login(api, "risk.analyst")
    family = jwt.get_unverified_claims(first["refresh_token"])["fam"]
    issued_days_ago(sessions, first["refresh_token"], limit - 1)
    second = await refresh(api, first["refresh_token"])
    assert second.status_code == 200, second.text

    # The new token is fresh, but its sign-in is not: the family started with the first.
    issued_days_ago(sessions, first["refresh_token"], limit + 1)
    late = await refresh(api, second.json()["refresh_token"])
    refused(late, f"older than {limit} days: sign in again")
    event = last_audit_event(sessions, "user:risk.analyst", "auth.refresh_family_expired")
    assert event.after == {"family": family} and event.sensitivity == "security"
    with sessions() as session:
        live = session.execute(
            select(func.count())
            .select_from(RefreshToken)
            .where(RefreshToken.family_id == family, RefreshToken.revoked_at.is_(None))
        ).scalar_one()
    assert live == 0
    refused(await refresh(api, second.json()["refresh_token"]), "invalid refresh token")


@pytest.mark.parametrize(
    "body",
    [{}, {"refresh_token": ""}, {"refresh_token": 5}, {"refresh_token": "x", "extra": 1}],
    ids=["missing", "empty", "int", "extra-field"],
)
async def test_malformed_refresh_body_is_422(api, body: dict[str, Any]):
    response = await api.post("/api/v1/auth/refresh", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"]


async def test_forged_refresh_tokens_are_401(api, sessions, settings):
    uid = user_id(sessions, "risk.analyst")
    never_issued, _ = encode_token(
        secret(settings),
        user_id=uid,
        token_type=REFRESH,
        lifetime=timedelta(days=1),
        family="forged-family",
    )
    tokens_before = refresh_token_count(sessions, uid)
    refused(await refresh(api, never_issued), "invalid refresh token")
    expired, _ = encode_token(
        secret(settings), user_id=uid, token_type=REFRESH, lifetime=timedelta(seconds=-1)
    )
    refused(await refresh(api, expired), "invalid refresh token")
    other_key = jwt.encode(
        claims_for(uid, typ=REFRESH, fam="f"), "another-key-" + "y" * 40, algorithm="HS256"
    )
    refused(await refresh(api, other_key), "invalid refresh token")
    refused(await refresh(api, "garbage"), "invalid refresh token")
    assert refresh_token_count(sessions, uid) == tokens_before


async def end_sign_ins(api: httpx.AsyncClient, username: str, headers: dict[str, str]):
    return await api.post(f"/api/v1/auth/users/{username}/end-sign-ins", headers=headers)


async def test_admin_ends_every_sign_in_of_a_person(api, tokens, sessions, make_user, web):
    username = make_user(("finance.clerk",), "fin-payouts", "finance")
    pair = await login(api, username)
    await web_login(web, username)

    forbidden = await end_sign_ins(api, username, await tokens.headers("fin.clerk"))
    assert forbidden.status_code == 403 and "sessions:manage" in forbidden.json()["detail"]
    rotated = await refresh(api, pair["refresh_token"])
    assert rotated.status_code == 200, rotated.text
    admin = await tokens.headers("admin")
    missing = await end_sign_ins(api, "nobody.here", admin)
    assert missing.status_code == 404 and missing.json()["detail"] == "no such user: nobody.here"

    assert (await end_sign_ins(api, username, admin)).status_code == 204
    refused(await refresh(api, rotated.json()["refresh_token"]), "invalid refresh token")
    assert (await web.get("/tasks")).status_code == 303
    event = last_audit_event(sessions, f"user:{username}", "auth.sign_ins_ended")
    assert event.actor == "admin" and event.sensitivity == "security"
    assert event.after == {
        "reason": "revoked by administrator",
        "sessions": 1,
        "token_families": 1,
    }


# --- web sign-in and CSRF -------------------------------------------------------------


@pytest.fixture
async def web(runtime, worker) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(runtime))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://testserver", follow_redirects=False
    ) as client:
        yield client


async def login_form(web: httpx.AsyncClient) -> str:
    page = await web.get("/login")
    assert page.status_code == 200
    assert web.cookies.get("bo_login_csrf")
    match = HIDDEN_CSRF.search(page.text)
    assert match, page.text
    assert match.group(1) == web.cookies.get("bo_login_csrf")
    return match.group(1)


async def web_login(web: httpx.AsyncClient, username: str) -> str:
    """Sign in through the form; returns the session's CSRF token from the new-request page."""
    csrf = await login_form(web)
    response = await web.post(
        "/login",
        data={"username": username, "password": PASSWORD, "csrf_token": csrf, "next": "/tasks"},
    )
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/tasks"
    assert web.cookies.get("bo_session")
    page = await web.get("/requests/new")
    assert page.status_code == 200, page.text
    match = HIDDEN_CSRF.search(page.text)
    assert match
    return match.group(1)


def requests_for(sessions: SessionFactory, payment_id: str) -> int:
    with sessions() as session:
        return session.execute(
            select(func.count())
            .select_from(ApprovalRequest)
            .where(ApprovalRequest.target == payment_id)
        ).scalar_one()


def nothing_written_for(sessions: SessionFactory, payment_id: str) -> None:
    assert requests_for(sessions, payment_id) == 0
    with sessions() as session:
        events = session.execute(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.target == payment_id)
        ).scalar_one()
    assert events == 0


async def test_web_post_without_csrf_token_is_403_and_writes_nothing(web, new_withdrawal, sessions):
    session_csrf = await web_login(web, "fin.clerk")
    payment_id = new_withdrawal("100.00")
    form = {
        "action": "payment.withdrawal",
        "target": payment_id,
        "amount": "100.00",
        "reason": "player asked",
    }

    missing = await web.post("/requests/new", data=form)
    assert missing.status_code == 403, missing.text
    assert "CSRF" in missing.text
    nothing_written_for(sessions, payment_id)

    wrong = await web.post("/requests/new", data={**form, "csrf_token": "not-the-token"})
    assert wrong.status_code == 403 and "CSRF" in wrong.text
    wrong_header = await web.post(
        "/requests/new", data=form, headers={"X-CSRF-Token": "not-the-token"}
    )
    assert wrong_header.status_code == 403 and "CSRF" in wrong_header.text
    htmx = await web.post("/requests/new", data=form, headers={"HX-Request": "true"})
    assert htmx.status_code == 403 and "CSRF" in htmx.text
    nothing_written_for(sessions, payment_id)

    # Control: the same form with the session's token goes through.
    accepted = await web.post("/requests/new", data={**form, "csrf_token": session_csrf})
    assert accepted.status_code == 303, accepted.text
    assert accepted.headers["location"].startswith("/requests/")
    assert requests_for(sessions, payment_id) == 1


async def test_web_csrf_token_of_another_session_is_403(runtime, web, new_withdrawal, sessions):
    await web_login(web, "fin.clerk")
    transport = httpx.ASGITransport(app=create_app(runtime))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://testserver", follow_redirects=False
    ) as other:
        managers_csrf = await web_login(other, "fin.manager")
    payment_id = new_withdrawal("100.00")
    response = await web.post(
        "/requests/new",
        data={
            "action": "payment.withdrawal",
            "target": payment_id,
            "amount": "100.00",
            "reason": "player asked",
            "csrf_token": managers_csrf,
        },
    )
    assert response.status_code == 403 and "CSRF" in response.text
    nothing_written_for(sessions, payment_id)


async def test_web_login_with_wrong_csrf_token_is_403(web, sessions):
    uid = user_id(sessions, "fin.clerk")
    logins_before = audit_count(sessions, "user:fin.clerk", "auth.login")
    web_sessions_before = web_session_count(sessions, uid)
    await login_form(web)

    response = await web.post(
        "/login",
        data={"username": "fin.clerk", "password": PASSWORD, "csrf_token": "forged"},
    )
    assert response.status_code == 403, response.text
    assert "The sign-in form expired" in response.text
    assert "bo_session" not in response.cookies
    assert web.cookies.get("bo_session") is None
    assert audit_count(sessions, "user:fin.clerk", "auth.login") == logins_before
    assert web_session_count(sessions, uid) == web_sessions_before

    # Not signed in: a protected page sends the browser back to the sign-in form.
    tasks = await web.get("/tasks")
    assert tasks.status_code == 303 and tasks.headers["location"].startswith("/login")


async def test_web_login_without_the_csrf_cookie_is_403(web, sessions):
    """A form posted from another site carries a token but not our cookie."""
    uid = user_id(sessions, "fin.clerk")
    web_sessions_before = web_session_count(sessions, uid)
    token = secrets.token_urlsafe(32)
    response = await web.post(
        "/login", data={"username": "fin.clerk", "password": PASSWORD, "csrf_token": token}
    )
    assert response.status_code == 403, response.text
    assert "The sign-in form expired" in response.text
    assert web_session_count(sessions, uid) == web_sessions_before


async def test_web_login_with_wrong_password_is_401_and_audited(web, sessions):
    stream = "user:fin.clerk"
    failed_before = audit_count(sessions, stream, "auth.login_failed")
    csrf = await login_form(web)
    response = await web.post(
        "/login", data={"username": "fin.clerk", "password": "guess", "csrf_token": csrf}
    )
    assert response.status_code == 401, response.text
    assert "Wrong username or password" in response.text
    assert web.cookies.get("bo_session") is None
    assert audit_count(sessions, stream, "auth.login_failed") == failed_before + 1
    assert last_audit_event(sessions, stream, "auth.login_failed").channel == "web"

"""Single sign-on through a real OIDC provider: the browser goes there and back."""

from __future__ import annotations

import base64
import json
import secrets
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import OctKey
from sqlalchemy import func, select

from api.app import create_app
from core import sso_oidc
from core.db import SessionFactory
from core.models import User, WebSession
from core.repositories import users as users_repo
from core.runtime import Runtime
from core.security import hash_password
from tests.identity.conftest import OIDC_CLIENT_ID, Provider, events, user_row


def new_person(provider: Provider, groups: list[str], name: str = "Pat Sso") -> tuple[str, str]:
    """A person at the provider (fresh subject and username); returns (sub, username)."""
    sub = f"sub-{secrets.token_hex(6)}"
    username = f"pat.{secrets.token_hex(4)}"
    provider.set_person(sub, {"preferred_username": username, "name": name, "groups": groups})
    return sub, username


async def to_callback(client: httpx.AsyncClient, sub: str) -> str:
    """Start at the SSO button, sign in at the provider as `sub`: the callback URL."""
    started = await client.get("/sso/oidc/login", params={"next": "/tasks"})
    assert started.status_code == 303, started.text
    authorize = started.headers["location"]
    query = parse_qs(urlsplit(authorize).query)
    assert query["code_challenge_method"] == ["S256"] and query["code_challenge"][0]
    assert query["state"][0] and query["nonce"][0]
    consent = await client.post(authorize, data={"sub": sub})
    assert consent.status_code == 302, consent.text
    callback = consent.headers["location"]
    assert callback.startswith("http://testserver/sso/oidc/callback?")
    return callback


def session_count(sessions: SessionFactory) -> int:
    with sessions() as session:
        return session.execute(select(func.count()).select_from(WebSession)).scalar_one()


async def test_login_page_offers_single_sign_on(browser_like):
    page = await browser_like.get("/login", params={"next": "/requests"})
    assert page.status_code == 200
    assert "Sign in with single sign-on" in page.text
    assert 'href="/sso/oidc/login?next=/requests"' in page.text


async def test_first_sign_in_provisions_the_person_with_their_groups_roles(
    browser_like, oidc_provider, sessions
):
    sub, username = new_person(oidc_provider, ["finance-managers", "canteen-committee"])
    callback = await to_callback(browser_like, sub)

    signed_in = await browser_like.get(callback)
    assert signed_in.status_code == 303, signed_in.text
    assert signed_in.headers["location"] == "/tasks"
    assert browser_like.cookies.get("bo_session")
    tasks = await browser_like.get("/tasks")
    assert tasks.status_code == 200 and "Pat Sso" in tasks.text

    found = user_row(sessions, username)
    assert found is not None
    user, roles = found
    assert roles == {"finance.manager"}
    assert (user.auth_source, user.department) == ("oidc", "finance")
    assert user.external_id == f"{oidc_provider.issuer}|{sub}"
    [provisioned] = events(sessions, username, "auth.user_provisioned")
    assert provisioned.sensitivity == "security"
    assert provisioned.after is not None and provisioned.after["roles"] == ["finance.manager"]
    assert len(events(sessions, username, "auth.login")) == 1


async def test_roles_are_replaced_by_the_current_groups_at_each_sign_in(
    runtime: Runtime, oidc_provider, sessions
):
    sub, username = new_person(oidc_provider, ["finance-clerks"])
    for groups in (["finance-clerks"], ["risk-analysts", "ops-agents"]):
        oidc_provider.set_person(
            sub, {"preferred_username": username, "name": "Pat Sso", "groups": groups}
        )
        app = httpx.ASGITransport(app=create_app(runtime))
        async with httpx.AsyncClient(
            base_url="http://testserver", mounts={"http://testserver": app}
        ) as client:
            assert (await client.get(await to_callback(client, sub))).status_code == 303

    found = user_row(sessions, username)
    assert found is not None and found[1] == {"risk.analyst", "operations.agent"}
    [synced] = events(sessions, username, "auth.roles_synced")
    assert synced.before is not None and synced.before["roles"] == ["finance.clerk"]
    assert synced.after is not None
    assert synced.after["roles"] == ["operations.agent", "risk.analyst"]


async def test_a_person_in_no_mapped_group_is_refused_and_nothing_is_created(
    browser_like, oidc_provider, sessions
):
    sub, username = new_person(oidc_provider, ["canteen-committee"])
    sessions_before = session_count(sessions)
    refused = await browser_like.get(await to_callback(browser_like, sub))
    assert refused.status_code == 403
    assert "not in any group that gives access" in refused.text
    assert browser_like.cookies.get("bo_session") is None
    assert user_row(sessions, username) is None
    assert session_count(sessions) == sessions_before
    [recorded] = events(sessions, username, "auth.sso_refused")
    assert recorded.after is not None and recorded.after["reason"] == "no mapped group"


async def test_a_wrong_state_is_refused(browser_like, oidc_provider, sessions):
    sub, username = new_person(oidc_provider, ["finance-managers"])
    callback = await to_callback(browser_like, sub)
    query = parse_qs(urlsplit(callback).query)
    forged = "/sso/oidc/callback?" + urlencode({"code": query["code"][0], "state": "forged"})
    refused = await browser_like.get(forged)
    assert refused.status_code == 400
    assert "state mismatch" in refused.text
    assert user_row(sessions, username) is None


async def test_a_callback_without_the_pending_cookie_is_refused(oidc_provider, browser_like):
    sub, _ = new_person(oidc_provider, ["finance-managers"])
    callback = await to_callback(browser_like, sub)
    browser_like.cookies.clear()
    refused = await browser_like.get(callback)
    assert refused.status_code == 400 and "did not start here" in refused.text


async def test_a_replayed_code_is_refused(browser_like, runtime, oidc_provider, sessions):
    sub, username = new_person(oidc_provider, ["finance-managers"])
    callback = await to_callback(browser_like, sub)
    pending = browser_like.cookies.get("bo_sso_pending")
    assert (await browser_like.get(callback)).status_code == 303
    sessions_before = session_count(sessions)

    # The same answer again, with the same cookie (an attacker who saw both).
    app = httpx.ASGITransport(app=create_app(runtime))
    async with httpx.AsyncClient(base_url="http://testserver", transport=app) as replay:
        replay.cookies.set("bo_sso_pending", pending, path="/sso")
        refused = await replay.get(callback)
    assert refused.status_code == 400
    assert "did not accept the sign-in code" in refused.text
    assert session_count(sessions) == sessions_before
    assert len(events(sessions, username, "auth.login")) == 1


async def test_the_provider_saying_no_is_shown(browser_like, oidc_provider):
    started = await browser_like.get("/sso/oidc/login")
    denied = await browser_like.post(started.headers["location"], data={"action": "deny"})
    refused = await browser_like.get(denied.headers["location"])
    assert refused.status_code == 400
    assert "did not sign you in (access_denied)" in refused.text


def _real_id_token(provider: Provider, sub: str, nonce: str) -> str:
    """An ID token as the provider issues it, through the code flow by hand."""
    redirect = "http://testserver/sso/oidc/callback"
    with httpx.Client(timeout=10) as client:
        consent = client.post(
            f"{provider.issuer}/oauth2/authorize?"
            + urlencode(
                {
                    "client_id": OIDC_CLIENT_ID,
                    "redirect_uri": redirect,
                    "response_type": "code",
                    "scope": "openid profile",
                    "state": "s",
                    "nonce": nonce,
                }
            ),
            data={"sub": sub},
        )
        code = parse_qs(urlsplit(consent.headers["location"]).query)["code"][0]
        token = client.post(
            f"{provider.issuer}/oauth2/token",
            data={"grant_type": "authorization_code", "code": code, "redirect_uri": redirect},
            auth=(OIDC_CLIENT_ID, "secret"),
        )
        return str(token.json()["id_token"])


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def test_id_tokens_that_are_tampered_unsigned_or_hmac_signed_are_refused(
    runtime: Runtime, oidc_provider
):
    sub, _ = new_person(oidc_provider, ["finance-clerks"])
    genuine = _real_id_token(oidc_provider, sub, "n-1")
    provider, keys = sso_oidc._provider(runtime.settings)
    claims = sso_oidc.verify_id_token(runtime.settings, provider, keys, genuine, "n-1")
    assert claims["sub"] == sub and claims["groups"] == ["finance-clerks"]

    header, payload, signature = genuine.split(".")
    widened = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    widened["groups"] = ["backoffice-admins"]
    tampered = f"{header}.{_b64(widened)}.{signature}"
    unsigned = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(widened)}."
    hmac_signed = jwt.encode({"alg": "HS256"}, widened, OctKey.import_key(b"x" * 32))
    for forged, reason in (
        (tampered, "signature"),
        (unsigned, "alg"),
        (hmac_signed, "HS256"),
        (genuine, "nonce"),  # a genuine token from another sign-in
    ):
        nonce = "n-other" if reason == "nonce" else "n-1"
        with pytest.raises(sso_oidc.SsoError, match="ID token was refused"):
            sso_oidc.verify_id_token(runtime.settings, provider, keys, forged, nonce)


async def test_local_password_login_is_refused_for_sso_people(
    browser_like, api, oidc_provider, sessions
):
    sub, username = new_person(oidc_provider, ["finance-managers"])
    assert (await browser_like.get(await to_callback(browser_like, sub))).status_code == 303
    # Even if a password hash of ours got there somehow, it does not count.
    with sessions() as session:
        user = users_repo.by_username(session, username)
        assert user is not None
        user.password_hash = hash_password("guessable")
        session.commit()
    refused = await api.post(
        "/api/v1/auth/token", json={"username": username, "password": "guessable"}
    )
    assert refused.status_code == 401
    assert refused.json()["detail"] == "wrong username or password"
    [failure] = events(sessions, username, "auth.login_failed")
    assert failure.after == {"reason": "oidc account"}


async def test_single_sign_on_cannot_take_over_a_local_account(
    browser_like, oidc_provider, sessions
):
    sub = f"sub-{secrets.token_hex(6)}"
    oidc_provider.set_person(
        sub, {"preferred_username": "fin.director", "groups": ["backoffice-admins"]}
    )
    before = user_row(sessions, "fin.director")
    refused = await browser_like.get(await to_callback(browser_like, sub))
    assert refused.status_code == 403
    assert "already belongs to another account" in refused.text
    after = user_row(sessions, "fin.director")
    assert before is not None and after is not None
    assert after[1] == before[1] and after[0].auth_source == "local"
    assert browser_like.cookies.get("bo_session") is None


def session_checks(sessions: SessionFactory, username: str) -> list[object]:
    with sessions() as session:
        return list(
            session.execute(
                select(WebSession.mfa_verified_at)
                .join(User, User.id == WebSession.user_id)
                .where(User.username == username)
            ).scalars()
        )


@pytest.mark.parametrize(("methods", "vouched"), [(["pwd", "otp"], True), (["pwd"], False)])
async def test_a_provider_that_checked_a_second_factor_vouches_for_the_session(
    browser_like, oidc_provider, sessions, methods, vouched
):
    """An ID token saying `amr: otp` counts as this sign-in's MFA check; `pwd` alone does not."""
    sub, username = new_person(oidc_provider, ["finance-managers"])
    person = {"preferred_username": username, "name": "Pat", "groups": ["finance-managers"]}
    oidc_provider.set_person(sub, {**person, "amr": methods})
    assert (await browser_like.get(await to_callback(browser_like, sub))).status_code == 303
    [checked] = session_checks(sessions, username)
    assert (checked is not None) == vouched
    [login] = events(sessions, username, "auth.login")
    assert login.after is not None and login.after["mfa"] is vouched


def test_second_factor_time_reads_amr_and_auth_time():
    now = int(datetime.now(UTC).timestamp())
    assert sso_oidc.second_factor_time({"amr": ["pwd"]}) is None
    assert sso_oidc.second_factor_time({"amr": "otp"}) is None  # not a list: not trusted
    assert sso_oidc.second_factor_time({}) is None
    # Without auth_time the check may be days old: a second factor, but never a fresh one.
    assert sso_oidc.second_factor_time({"amr": ["otp"]}) == sso_oidc.LONG_AGO
    checked = sso_oidc.second_factor_time({"amr": ["pwd", "mfa"], "auth_time": now - 600})
    assert checked == datetime.fromtimestamp(now - 600, UTC)
    future = sso_oidc.second_factor_time({"amr": ["hwk"], "auth_time": now + 3600})
    assert future is not None and future <= datetime.now(UTC)  # never later than now

"""MFA (TOTP enrolment, sign-in, role enforcement, step-up), browser session timeouts and
limits, and sign-in lockout, through the real app on PostgreSQL and Temporal.

Each test works on throwaway users so the demo users keep signing in without MFA.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import httpx
import pyotp
import pytest
from sqlalchemy import func, select, update

from api.app import create_app
from core.db import SessionFactory
from core.models import AuditEvent, LoginAttempt, Task, User, UserRole, WebSession
from core.runtime import Runtime
from core.security import ACCESS, encode_token
from core.settings import Settings
from tests.conftest import HIDDEN_CSRF, TEST_SECRET, Tokens
from web.routes import SESSION_COOKIE

PASSWORD = "backoffice"
SECRET_SHOWN = re.compile(r'id="mfa-secret">([A-Z2-7]+)<')


# --- helpers --------------------------------------------------------------------------


def events(sessions: SessionFactory, username: str, action: str) -> list[AuditEvent]:
    with sessions() as session:
        rows = session.execute(
            select(AuditEvent)
            .where(AuditEvent.stream == f"user:{username}", AuditEvent.action == action)
            .order_by(AuditEvent.seq)
        ).scalars()
        found = list(rows)
        session.expunge_all()
        return found


def user_row(sessions: SessionFactory, username: str) -> User:
    with sessions() as session:
        user = session.execute(select(User).where(User.username == username)).scalar_one()
        session.expunge(user)
        return user


def code_for(sessions: SessionFactory, username: str, secret: str) -> str:
    """A valid code not used yet: the current time step, or the next one if that is used."""
    totp = pyotp.TOTP(secret)
    current = totp.timecode(datetime.now(UTC))
    last = user_row(sessions, username).mfa_last_step
    step = current if last is None or last < current else last + 1
    assert step <= current + 1, "no unused code left in this 30-second window"
    return totp.generate_otp(step)


def wrong_code(good: str) -> str:
    return f"{(int(good) + 1) % 1_000_000:06d}"


async def token(api: httpx.AsyncClient, username: str, **extra: str) -> httpx.Response:
    return await api.post(
        "/api/v1/auth/token", json={"username": username, "password": PASSWORD, **extra}
    )


def bearer(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


@pytest.fixture
def client_factory(runtime, worker):
    """Browser-like clients (own cookies, no redirects followed) on the real app."""
    app = create_app(runtime)

    def make(ip: str = "127.0.0.1") -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, client=(ip, 50000))
        return httpx.AsyncClient(
            transport=transport, base_url="http://testserver", follow_redirects=False
        )

    return make


@pytest.fixture
async def web(client_factory) -> AsyncIterator[httpx.AsyncClient]:
    async with client_factory() as client:
        yield client


async def password_step(web: httpx.AsyncClient, username: str, password: str = PASSWORD):
    page = await web.get("/login")
    csrf = HIDDEN_CSRF.search(page.text)
    assert csrf, page.text
    return await web.post(
        "/login",
        data={
            "username": username,
            "password": password,
            "csrf_token": csrf.group(1),
            "next": "/tasks",
        },
    )


async def web_login(web: httpx.AsyncClient, username: str) -> str:
    """Sign in (no MFA); returns the session's CSRF token."""
    response = await password_step(web, username)
    assert response.status_code == 303 and response.headers["location"] == "/tasks"
    return await csrf_of(web, "/account/sessions")


async def csrf_of(web: httpx.AsyncClient, path: str) -> str:
    page = await web.get(path)
    assert page.status_code == 200, page.text
    match = HIDDEN_CSRF.search(page.text)
    assert match
    return match.group(1)


async def enrol_in_browser(web: httpx.AsyncClient, sessions, username: str) -> str:
    """Set up MFA through the pages of a signed-in (or must-enrol) session; returns the secret."""
    csrf = await csrf_of(web, "/account/mfa")
    shown = await web.post("/account/mfa/start", data={"csrf_token": csrf})
    assert shown.status_code == 200, shown.text
    assert "<svg" in shown.text, "the QR code is on the page"
    secret = SECRET_SHOWN.search(shown.text)
    assert secret, shown.text
    confirmed = await web.post(
        "/account/mfa/confirm",
        data={"csrf_token": csrf, "totp": code_for(sessions, username, secret.group(1))},
    )
    assert confirmed.status_code == 303, confirmed.text
    return secret.group(1)


async def enrolled_user(make_user, client_factory, sessions, roles=("finance.manager",)):
    username = make_user(roles, "fin-treasury", "finance")
    async with client_factory() as web:
        await web_login(web, username)
        secret = await enrol_in_browser(web, sessions, username)
    forget_used_codes(sessions, username)
    return username, secret


def forget_used_codes(sessions: SessionFactory, username: str) -> None:
    """As if the last code was typed a while ago: this 30-second window's codes work again."""
    with sessions() as session:
        session.execute(update(User).where(User.username == username).values(mfa_last_step=None))
        session.commit()


def session_rows(sessions: SessionFactory, username: str) -> list[WebSession]:
    with sessions() as session:
        rows = session.execute(
            select(WebSession)
            .join(User, User.id == WebSession.user_id)
            .where(User.username == username)
            .order_by(WebSession.created_at, WebSession.id)
        ).scalars()
        found = list(rows)
        session.expunge_all()
        return found


# --- enrolment and sign-in with a code -----------------------------------------------


async def test_enrolment_shows_the_secret_once_and_stores_it_encrypted(make_user, web, sessions):
    username = make_user(("finance.clerk",), "fin-payouts", "finance")
    await web_login(web, username)
    secret = await enrol_in_browser(web, sessions, username)
    stored = user_row(sessions, username)
    assert stored.mfa_enabled_at is not None
    assert stored.mfa_secret and secret not in stored.mfa_secret  # sealed, not plain
    page = await web.get("/account/mfa")
    assert "On" in page.text and secret not in page.text  # never shown again
    again = await web.post(
        "/account/mfa/start", data={"csrf_token": await csrf_of(web, "/account/sessions")}
    )
    assert again.status_code == 409 and "already set up" in again.text
    assert len(events(sessions, username, "auth.mfa_enrolled")) == 1


async def test_enrolment_wrong_code_is_refused_and_mfa_stays_off(make_user, web, sessions):
    username = make_user(("finance.clerk",), "fin-payouts", "finance")
    csrf = await web_login(web, username)
    shown = await web.post("/account/mfa/start", data={"csrf_token": csrf})
    secret = SECRET_SHOWN.search(shown.text)
    assert secret
    good = code_for(sessions, username, secret.group(1))
    refused = await web.post(
        "/account/mfa/confirm", data={"csrf_token": csrf, "totp": wrong_code(good)}
    )
    assert refused.status_code == 401 and "Wrong or already used authenticator code" in (
        refused.text
    )
    assert user_row(sessions, username).mfa_enabled_at is None
    assert events(sessions, username, "auth.mfa_failed")[-1].after == {"reason": "mfa:enrolment"}


async def test_api_sign_in_asks_for_the_code_refuses_wrong_or_replayed_ones(
    make_user, client_factory, api, sessions
):
    username, secret = await enrolled_user(make_user, client_factory, sessions)
    missing = await token(api, username)
    assert missing.status_code == 401 and "authenticator code required" in missing.json()["detail"]

    good = code_for(sessions, username, secret)
    wrong = await token(api, username, totp=wrong_code(good))
    assert wrong.status_code == 401
    assert wrong.json()["detail"] == "wrong or already used authenticator code"
    assert events(sessions, username, "auth.mfa_failed")[-1].after == {"reason": "mfa:login"}

    accepted = await token(api, username, totp=good)
    assert (await api.get("/api/v1/me", headers=bearer(accepted))).status_code == 200
    assert events(sessions, username, "auth.login")[-1].after == {"channel": "api", "mfa": True}
    replayed = await token(api, username, totp=good)
    assert replayed.status_code == 401 and "already used" in replayed.json()["detail"]


async def test_web_sign_in_with_a_code(make_user, client_factory, sessions):
    username, secret = await enrolled_user(make_user, client_factory, sessions)
    async with client_factory() as web:
        after_password = await password_step(web, username)
        assert after_password.status_code == 303
        assert after_password.headers["location"].startswith("/login/mfa")
        # Nothing else is reachable before the code.
        assert (await web.get("/tasks")).status_code == 303
        form = await web.get("/login/mfa?next=/tasks")
        assert "Authenticator code" in form.text
        csrf = HIDDEN_CSRF.search(form.text)
        assert csrf
        good = code_for(sessions, username, secret)
        wrong = await web.post(
            "/login/mfa",
            data={"csrf_token": csrf.group(1), "totp": wrong_code(good), "next": "/tasks"},
        )
        assert wrong.status_code == 401 and "Wrong or already used" in wrong.text
        right = await web.post(
            "/login/mfa", data={"csrf_token": csrf.group(1), "totp": good, "next": "/tasks"}
        )
        assert right.status_code == 303 and right.headers["location"] == "/tasks"
        assert (await web.get("/tasks")).status_code == 200
    assert session_rows(sessions, username)[-1].stage == "active"


# --- enforcement per role ---------------------------------------------------------------


async def test_role_requiring_mfa_sends_an_unenrolled_person_to_enrolment(
    make_user, client_factory, api, sessions
):
    username = make_user(("finance.vip_payments",), "fin-vip", "finance")
    refused = await token(api, username)
    assert refused.status_code == 403 and "/account/mfa" in refused.json()["detail"]
    assert events(sessions, username, "auth.mfa_enrolment_required")

    async with client_factory() as web:
        after_password = await password_step(web, username)
        assert after_password.headers["location"] == "/account/mfa"
        for path in ("/tasks", "/requests", "/account/sessions"):
            assert (await web.get(path)).status_code == 303, path  # nowhere else to go
        assert (await web.get("/login")).headers["location"] == "/account/mfa"
        page = await web.get("/account/mfa")
        assert "nothing else is available until you do" in page.text
        assert 'href="/tasks"' not in page.text  # no navigation yet
        pending_cookie = web.cookies[SESSION_COOKIE]
        await enrol_in_browser(web, sessions, username)
        assert (await web.get("/tasks")).status_code == 200
        assert web.cookies[SESSION_COOKIE] != pending_cookie
    async with client_factory() as planted:
        planted.cookies.set(SESSION_COOKIE, pending_cookie)
        assert (await planted.get("/account/mfa")).status_code == 303

    secret_user = user_row(sessions, username)
    assert secret_user.mfa_enabled_at is not None


async def test_enrolment_ends_every_password_only_sign_in(make_user, client_factory, api, sessions):
    username = make_user(("finance.clerk",), "fin-payouts", "finance")
    before = (await token(api, username)).json()
    async with client_factory() as laptop, client_factory("10.9.8.7") as phone:
        await web_login(laptop, username)
        await web_login(phone, username)
        await enrol_in_browser(laptop, sessions, username)
        assert (await laptop.get("/tasks")).status_code == 200  # the enrolling one stays
        assert (await phone.get("/tasks")).status_code == 303
    stale = await api.post("/api/v1/auth/refresh", json={"refresh_token": before["refresh_token"]})
    assert stale.status_code == 401 and stale.json()["detail"] == "invalid refresh token"
    ended = events(sessions, username, "auth.sign_ins_ended")
    assert [event.after for event in ended] == [
        {"reason": "mfa enrolled", "sessions": 1, "token_families": 1}
    ]
    assert events(sessions, username, "auth.session_revoked")[-1].after == {
        "session": session_rows(sessions, username)[1].id,
        "reason": "mfa enrolled",
        "ip": "10.9.8.7",
    }


async def test_the_code_step_replaces_the_pending_cookie_and_csrf(
    make_user, client_factory, sessions
):
    username, secret = await enrolled_user(make_user, client_factory, sessions)
    async with client_factory() as web:
        await password_step(web, username)
        pending_cookie = web.cookies[SESSION_COOKIE]
        pending_csrf = await csrf_of(web, "/login/mfa?next=/tasks")
        right = await web.post(
            "/login/mfa",
            data={
                "csrf_token": pending_csrf,
                "totp": code_for(sessions, username, secret),
                "next": "/tasks",
            },
        )
        assert right.status_code == 303 and right.headers["location"] == "/tasks"
        assert web.cookies[SESSION_COOKIE] != pending_cookie
        assert await csrf_of(web, "/account/sessions") != pending_csrf
    async with client_factory() as planted:  # whoever knew the cookie before the code
        planted.cookies.set(SESSION_COOKIE, pending_cookie)
        assert (await planted.get("/tasks")).status_code == 303
        assert (await planted.get("/login/mfa")).status_code == 303
    pending, active = session_rows(sessions, username)[-2:]
    assert pending.stage == "mfa" and pending.revoked_reason == "replaced on activation"
    assert active.stage == "active" and active.revoked_at is None


# --- step-up before high-risk approvals --------------------------------------------------


async def submit_withdrawal(api, tokens: Tokens, payment_id: str) -> str:
    created = await api.post(
        "/api/v1/requests",
        json={"action": "payment.withdrawal", "target": payment_id, "params": {}, "reason": "r"},
        headers=await tokens.headers("fin.clerk"),
    )
    assert created.status_code == 201, created.text
    return created.json()["id"]


def token_checked_minutes_ago(sessions: SessionFactory, username: str, minutes: int) -> dict:
    """Headers with an access token of a sign-in whose code was typed `minutes` ago."""
    then = datetime.now(UTC) - timedelta(minutes=minutes)
    user = user_row(sessions, username)
    access, _ = encode_token(
        TEST_SECRET,
        user_id=user.id,
        token_type=ACCESS,
        lifetime=timedelta(hours=1),
        now=then,
        mfa_at=then,
    )
    return {"Authorization": f"Bearer {access}"}


def age_session_check(sessions: SessionFactory, username: str, minutes: int) -> None:
    then = datetime.now(UTC) - timedelta(minutes=minutes)
    shift_session(sessions, username, mfa_verified_at=then)


def approvals_on_first_step(sessions: SessionFactory, request_id: str) -> int:
    with sessions() as session:
        return session.execute(
            select(Task.approvals).where(Task.request_id == request_id, Task.step_index == 0)
        ).scalar_one()


async def test_high_risk_approval_needs_a_fresh_code(
    make_user, client_factory, api, tokens, new_withdrawal, sessions
):
    manager, secret = await enrolled_user(make_user, client_factory, sessions)
    headers = token_checked_minutes_ago(sessions, manager, 30)
    request_id = await submit_withdrawal(api, tokens, new_withdrawal("15000.00"))
    decision = f"/api/v1/requests/{request_id}/decision"

    stale = await api.post(decision, json={"decision": "approve"}, headers=headers)
    assert stale.status_code == 403, stale.text
    assert "high-risk" in stale.json()["detail"]
    assert approvals_on_first_step(sessions, request_id) == 0

    good = code_for(sessions, manager, secret)
    wrong = await api.post(
        decision, json={"decision": "approve", "totp": wrong_code(good)}, headers=headers
    )
    assert wrong.status_code == 403 and "wrong or already used" in wrong.json()["detail"]
    assert events(sessions, manager, "auth.mfa_failed")[-1].after == {"reason": "mfa:step_up"}
    assert approvals_on_first_step(sessions, request_id) == 0

    fresh = await api.post(decision, json={"decision": "approve", "totp": good}, headers=headers)
    assert fresh.status_code == 200, fresh.text
    assert approvals_on_first_step(sessions, request_id) == 1
    assert events(sessions, manager, "auth.mfa_step_up")[-1].after == {"for": "payment.withdrawal"}


async def test_ordinary_approval_and_a_sign_in_with_a_recent_code_need_no_new_code(
    make_user, client_factory, api, tokens, new_withdrawal, sessions
):
    manager, secret = await enrolled_user(make_user, client_factory, sessions)
    stale = token_checked_minutes_ago(sessions, manager, 30)
    small = await submit_withdrawal(api, tokens, new_withdrawal("2500.00"))
    approved = await api.post(
        f"/api/v1/requests/{small}/decision", json={"decision": "approve"}, headers=stale
    )
    assert approved.status_code == 200, approved.text

    signed_in = await token(api, manager, totp=code_for(sessions, manager, secret))
    rotated = await api.post(
        "/api/v1/auth/refresh", json={"refresh_token": signed_in.json()["refresh_token"]}
    )
    large = await submit_withdrawal(api, tokens, new_withdrawal("20000.00"))
    approved = await api.post(
        f"/api/v1/requests/{large}/decision", json={"decision": "approve"}, headers=bearer(rotated)
    )
    assert approved.status_code == 200, approved.text  # the code of the sign-in, carried over


@pytest.fixture
async def api_as_shipped(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    """The API with STEP_UP_REQUIRES_MFA at its default (the suite's settings turn it off)."""
    shipped = replace(
        runtime, settings=runtime.settings.model_copy(update={"step_up_requires_mfa": True})
    )
    transport = httpx.ASGITransport(app=create_app(shipped))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


def test_the_shipped_default_refuses_high_risk_approvals_without_mfa():
    assert Settings.model_fields["step_up_requires_mfa"].default is True


async def test_high_risk_approval_without_mfa_set_up_is_refused(
    make_user, api_as_shipped, tokens, new_withdrawal, sessions
):
    api = api_as_shipped
    manager = make_user(("finance.manager",), "fin-treasury", "finance")
    headers = bearer(await token(api, manager))
    large = await submit_withdrawal(api, tokens, new_withdrawal("15000.00"))
    refused = await api.post(
        f"/api/v1/requests/{large}/decision",
        json={"decision": "approve", "totp": "123456"},
        headers=headers,
    )
    assert refused.status_code == 403, refused.text
    assert "set up an authenticator" in refused.json()["detail"]
    assert approvals_on_first_step(sessions, large) == 0
    small = await submit_withdrawal(api, tokens, new_withdrawal("2500.00"))
    approved = await api.post(
        f"/api/v1/requests/{small}/decision", json={"decision": "approve"}, headers=headers
    )
    assert approved.status_code == 200, approved.text


async def test_with_step_up_mfa_optional_a_code_from_someone_without_mfa_is_ignored(
    make_user, api, tokens, new_withdrawal, sessions
):
    """STEP_UP_REQUIRES_MFA off (as in this suite): no second factor, no check to fail."""
    manager = make_user(("finance.manager",), "fin-treasury", "finance")
    large = await submit_withdrawal(api, tokens, new_withdrawal("15000.00"))
    approved = await api.post(
        f"/api/v1/requests/{large}/decision",
        json={"decision": "approve", "totp": "123456"},
        headers=bearer(await token(api, manager)),
    )
    assert approved.status_code == 200, approved.text


async def test_web_step_up_page_then_approve(
    make_user, client_factory, tokens, api, new_withdrawal, sessions
):
    manager, secret = await enrolled_user(make_user, client_factory, sessions)
    request_id = await submit_withdrawal(api, tokens, new_withdrawal("12000.00"))
    async with client_factory() as web, client_factory() as other_browser:
        for browser in (web, other_browser):
            await password_step(browser, manager)
            form = await browser.get("/login/mfa")
            csrf = HIDDEN_CSRF.search(form.text)
            assert csrf
            await browser.post(
                "/login/mfa",
                data={"csrf_token": csrf.group(1), "totp": code_for(sessions, manager, secret)},
            )
        age_session_check(sessions, manager, 30)
        csrf_token = await csrf_of(web, f"/requests/{request_id}")
        decide = {"csrf_token": csrf_token, "decision": "approve", "comment": ""}
        refused = await web.post(
            f"/requests/{request_id}/decision", data=decide, headers={"HX-Request": "true"}
        )
        assert "high-risk" in refused.text
        assert approvals_on_first_step(sessions, request_id) == 0
        forget_used_codes(sessions, manager)
        verified = await web.post(
            "/account/verify",
            data={
                "csrf_token": csrf_token,
                "totp": code_for(sessions, manager, secret),
                "next": f"/requests/{request_id}",
            },
        )
        assert verified.headers["location"] == f"/requests/{request_id}"

        # The code typed in one browser vouches for that sign-in only.
        other_csrf = await csrf_of(other_browser, f"/requests/{request_id}")
        elsewhere = await other_browser.post(
            f"/requests/{request_id}/decision",
            data={**decide, "csrf_token": other_csrf},
            headers={"HX-Request": "true"},
        )
        assert "high-risk" in elsewhere.text
        assert approvals_on_first_step(sessions, request_id) == 0

        await web.post(
            f"/requests/{request_id}/decision", data=decide, headers={"HX-Request": "true"}
        )
        assert approvals_on_first_step(sessions, request_id) == 1


async def test_web_approval_with_the_code_typed_on_the_request_page(
    make_user, client_factory, tokens, api, new_withdrawal, sessions
):
    manager, secret = await enrolled_user(make_user, client_factory, sessions)
    request_id = await submit_withdrawal(api, tokens, new_withdrawal("12000.00"))
    small_id = await submit_withdrawal(api, tokens, new_withdrawal("300.00"))
    async with client_factory() as web:
        await password_step(web, manager)
        csrf = await csrf_of(web, "/login/mfa")
        await web.post(
            "/login/mfa", data={"csrf_token": csrf, "totp": code_for(sessions, manager, secret)}
        )
        assert "Authenticator code" not in (await web.get(f"/requests/{request_id}")).text
        age_session_check(sessions, manager, 30)
        assert "Authenticator code" not in (await web.get(f"/requests/{small_id}")).text
        page = await web.get(f"/requests/{request_id}")
        assert "High-risk approval" in page.text and 'name="totp"' in page.text
        forget_used_codes(sessions, manager)
        decided = await web.post(
            f"/requests/{request_id}/decision",
            data={
                "csrf_token": HIDDEN_CSRF.search(page.text).group(1),  # type: ignore[union-attr]
                "decision": "approve",
                "comment": "",
                "totp": code_for(sessions, manager, secret),
            },
            headers={"HX-Request": "true"},
        )
        assert decided.status_code == 200 and "high-risk" not in decided.text
        assert approvals_on_first_step(sessions, request_id) == 1


def grant_role(sessions: SessionFactory, username: str, role: str) -> None:
    with sessions() as session:
        user_id = session.execute(select(User.id).where(User.username == username)).scalar_one()
        session.add(UserRole(user_id=user_id, role=role))
        session.commit()


async def test_a_role_needing_mfa_given_mid_session_holds_that_session(
    make_user, client_factory, api, sessions
):
    username = make_user(("finance.clerk",), "fin-payouts", "finance")
    headers = bearer(await token(api, username))
    async with client_factory() as web:
        await web_login(web, username)
        assert (await web.get("/tasks")).status_code == 200
        grant_role(sessions, username, "finance.vip_payments")  # mfa_required

        held = await web.get("/tasks")
        assert held.status_code == 303
        assert (await web.get("/login")).headers["location"] == "/account/mfa"
        assert session_rows(sessions, username)[-1].stage == "enrol"
        assert events(sessions, username, "auth.mfa_now_required")[-1].after == {
            "session": session_rows(sessions, username)[-1].id,
            "waits_for": "enrol",
        }
        refused = await api.get("/api/v1/me", headers=headers)
        assert refused.status_code == 403 and "multi-factor" in refused.json()["detail"]

        await enrol_in_browser(web, sessions, username)
        assert (await web.get("/tasks")).status_code == 200


# --- session timeouts and limits ------------------------------------------------------


def shift_session(sessions: SessionFactory, username: str, **values: datetime) -> None:
    with sessions() as session:
        user_id = session.execute(select(User.id).where(User.username == username)).scalar_one()
        session.execute(update(WebSession).where(WebSession.user_id == user_id).values(**values))
        session.commit()


async def test_idle_session_ends_and_is_recorded(make_user, web, sessions, runtime):
    username = make_user(("finance.clerk",), "fin-payouts", "finance")
    await web_login(web, username)
    idle = runtime.settings.session_idle_minutes
    shift_session(sessions, username, last_seen_at=datetime.now(UTC) - timedelta(minutes=idle - 1))
    assert (await web.get("/tasks")).status_code == 200  # used in time: still signed in
    shift_session(sessions, username, last_seen_at=datetime.now(UTC) - timedelta(minutes=idle + 1))
    ended = await web.get("/tasks")
    assert ended.status_code == 303 and ended.headers["location"].startswith("/login")
    assert session_rows(sessions, username)[0].revoked_reason == "idle"
    revoked = events(sessions, username, "auth.session_revoked")[-1]
    assert revoked.after is not None and revoked.after["reason"] == "idle"
    assert revoked.actor == "system"


async def test_session_past_its_absolute_end_is_refused(make_user, web, sessions):
    username = make_user(("finance.clerk",), "fin-payouts", "finance")
    await web_login(web, username)
    shift_session(sessions, username, expires_at=datetime.now(UTC) - timedelta(seconds=1))
    ended = await web.get("/tasks")
    assert ended.status_code == 303 and ended.headers["location"].startswith("/login")


async def test_session_limit_revokes_the_oldest(make_user, client_factory, sessions, runtime):
    username = make_user(("finance.clerk",), "fin-payouts", "finance")
    limit = runtime.settings.max_sessions_per_user
    clients = [client_factory() for _ in range(limit + 1)]
    try:
        for client in clients:
            await web_login(client, username)
        rows = session_rows(sessions, username)
        assert [r.revoked_reason for r in rows] == ["session limit"] + [None] * limit
        assert (await clients[0].get("/tasks")).status_code == 303
        assert (await clients[1].get("/tasks")).status_code == 200
        revoked = events(sessions, username, "auth.session_revoked")
        assert [e.after["session"] for e in revoked if e.after] == [rows[0].id]
    finally:
        for client in clients:
            await client.aclose()


async def test_list_and_revoke_my_sessions(make_user, client_factory, sessions):
    username = make_user(("finance.clerk",), "fin-payouts", "finance")
    other = make_user(("finance.clerk",), "fin-payouts", "finance")
    async with client_factory() as laptop, client_factory("10.9.8.7") as phone:
        csrf = await web_login(laptop, username)
        await web_login(phone, username)
        page = await laptop.get("/account/sessions")
        assert page.text.count('id="session-') == 2
        assert "(this session)" in page.text and "10.9.8.7" in page.text
        phone_row, laptop_row = (
            session_rows(sessions, username)[1],
            session_rows(sessions, username)[0],
        )

        # Someone else's session is not mine to revoke (and is not even named).
        async with client_factory() as stranger:
            stranger_csrf = await web_login(stranger, other)
            refused = await stranger.post(
                f"/account/sessions/{phone_row.id}/revoke", data={"csrf_token": stranger_csrf}
            )
            assert refused.status_code == 404 and "No such session" in refused.text
        assert (await phone.get("/tasks")).status_code == 200

        revoked = await laptop.post(
            f"/account/sessions/{phone_row.id}/revoke", data={"csrf_token": csrf}
        )
        assert revoked.headers["location"] == "/account/sessions"
        assert (await phone.get("/tasks")).status_code == 303
        assert (await laptop.get("/tasks")).status_code == 200
        again = await laptop.post(
            f"/account/sessions/{phone_row.id}/revoke", data={"csrf_token": csrf}
        )
        assert again.status_code == 404 and "already ended" in again.text
        event = events(sessions, username, "auth.session_revoked")[-1]
        assert event.after == {
            "session": phone_row.id,
            "reason": "revoked by owner",
            "ip": "10.9.8.7",
        }
        assert laptop_row.revoked_at is None


async def test_admin_revokes_anyones_session_others_may_not(make_user, client_factory, sessions):
    username = make_user(("finance.clerk",), "fin-payouts", "finance")
    async with client_factory() as victim, client_factory() as admin, client_factory() as clerk:
        await web_login(victim, username)
        target = session_rows(sessions, username)[-1]
        clerk_csrf = await web_login(clerk, "fin.clerk")
        assert (await clerk.get("/admin/sessions")).status_code == 403
        forbidden = await clerk.post(
            f"/admin/sessions/{target.id}/revoke", data={"csrf_token": clerk_csrf}
        )
        assert forbidden.status_code == 403 and "sessions:manage" in forbidden.text
        assert (await victim.get("/tasks")).status_code == 200

        admin_csrf = await web_login(admin, "admin")
        listed = await admin.get(f"/admin/sessions?user={username}")
        assert f'id="session-{target.id}"' in listed.text
        revoked = await admin.post(
            f"/admin/sessions/{target.id}/revoke", data={"csrf_token": admin_csrf}
        )
        assert revoked.status_code == 303
        assert (await victim.get("/tasks")).status_code == 303
        event = events(sessions, username, "auth.session_revoked")[-1]
        assert event.actor == "admin" and event.after is not None
        assert event.after["reason"] == "revoked by administrator"
        missing = await admin.post(
            "/admin/sessions/999999999/revoke", data={"csrf_token": admin_csrf}
        )
        assert missing.status_code == 404 and "No such session" in missing.text


# --- lockout and throttling ---------------------------------------------------------------


async def test_guesses_in_other_letter_cases_count_toward_one_lockout(make_user, api, runtime):
    """Directories match names without case: "Name" and "NAME" are guesses at one account."""
    username = make_user(("finance.clerk",), "fin-payouts", "finance")
    spellings = [username.upper(), username.title(), username.swapcase()]
    for attempt in range(runtime.settings.login_max_failures):
        guess = {"username": spellings[attempt % len(spellings)], "password": "guess"}
        await api.post("/api/v1/auth/token", json=guess)
    locked = await token(api, username)  # the right password, in the account's own spelling
    assert locked.status_code == 429, locked.text
    assert "for this account" in locked.json()["detail"]


async def test_lockout_after_repeated_failures_then_unlock(
    make_user, api, tokens, sessions, runtime
):
    username = make_user(("finance.clerk",), "fin-payouts", "finance")
    limit = runtime.settings.login_max_failures
    for _ in range(limit - 1):
        failed = await api.post(
            "/api/v1/auth/token", json={"username": username, "password": "guess"}
        )
        assert failed.status_code == 401
    locking = await api.post("/api/v1/auth/token", json={"username": username, "password": "x"})
    assert locking.status_code == 429, locking.text
    retry_after = int(locking.headers["retry-after"])
    assert 0 < retry_after <= runtime.settings.login_lockout_minutes * 60 + 1
    assert "locked" in locking.json()["detail"]
    # Even the right password is refused while locked, and nothing more is counted.
    still = await token(api, username)
    assert still.status_code == 429 and "retry-after" in still.headers
    lockout = events(sessions, username, "auth.lockout")
    assert len(lockout) == 1 and lockout[0].sensitivity == "security"
    assert len(events(sessions, username, "auth.login_failed")) == limit

    refused = await api.delete(
        f"/api/v1/auth/lockouts/{username}", headers=await tokens.headers("fin.clerk")
    )
    assert refused.status_code == 403 and "sessions:manage" in refused.json()["detail"]
    unlocked = await api.delete(
        f"/api/v1/auth/lockouts/{username}", headers=await tokens.headers("admin")
    )
    assert unlocked.status_code == 204, unlocked.text
    assert events(sessions, username, "auth.unlock")[-1].actor == "admin"
    assert (await token(api, username)).status_code == 200
    nothing = await api.delete(
        f"/api/v1/auth/lockouts/{username}", headers=await tokens.headers("admin")
    )
    assert nothing.status_code == 404 and "no failed sign-ins" in nothing.json()["detail"]


async def test_parallel_guesses_cannot_outrun_the_lockout(make_user, api, sessions, runtime):
    """Thirty guesses at once: at most the limit is tried, and then the right password
    waits too. (A right password among the guesses would clear the count when it happened
    to run early, so it comes after them.)"""
    username = make_user(("finance.clerk",), "fin-payouts", "finance")
    limit = runtime.settings.login_max_failures
    guesses = [{"username": username, "password": f"guess-{n}"} for n in range(30)]
    answers = await asyncio.gather(*(api.post("/api/v1/auth/token", json=body) for body in guesses))
    assert len(events(sessions, username, "auth.login_failed")) == limit
    statuses = [a.status_code for a in answers]
    assert set(statuses) == {401, 429}
    assert statuses.count(401) <= limit  # the guess reaching the limit is answered 429
    assert statuses.count(429) >= len(guesses) - limit
    assert (await token(api, username)).status_code == 429


@pytest.mark.parametrize(
    "code",
    ["\u0661\u0662\u0663\u0664\u0665\u0666", "\uff11\uff12\uff13\uff14\uff15\uff16", "12345\uff16"],
    ids=["arabic-indic", "fullwidth", "mixed"],
)
async def test_codes_in_other_digit_scripts_are_wrong_codes(
    make_user, client_factory, sessions, api, code
):
    username, _ = await enrolled_user(make_user, client_factory, sessions)
    refused = await token(api, username, totp=code)
    assert refused.status_code == 401, refused.text
    assert events(sessions, username, "auth.mfa_failed")


async def test_unknown_usernames_lock_the_same_way(api, runtime):
    """Whether an account exists is not revealed by the lockout either."""
    ghost = "ghost.nobody"
    statuses = []
    for _ in range(runtime.settings.login_max_failures):
        response = await api.post("/api/v1/auth/token", json={"username": ghost, "password": "x"})
        statuses.append(response.status_code)
    assert statuses[-1] == 429 and set(statuses[:-1]) == {401}


async def test_web_lockout_is_an_inline_message_and_admin_unlocks(
    make_user, client_factory, sessions, runtime
):
    username = make_user(("finance.clerk",), "fin-payouts", "finance")
    async with client_factory() as web, client_factory() as admin:
        for _ in range(runtime.settings.login_max_failures - 1):
            assert (await password_step(web, username, "guess")).status_code == 401
        locked = await password_step(web, username, "guess")
        assert locked.status_code == 429
        assert 'role="alert"' in locked.text and "this account is locked for" in locked.text
        assert (await password_step(web, username)).status_code == 429

        admin_csrf = await web_login(admin, "admin")
        page = await admin.get("/admin/sessions")
        assert username in page.text and "Locked" in page.text
        cleared = await admin.post(
            "/admin/lockouts/clear", data={"csrf_token": admin_csrf, "username": username}
        )
        assert cleared.status_code == 200 and f"Unlocked {username}" in cleared.text
        assert (await password_step(web, username)).status_code == 303
        nothing = await admin.post(
            "/admin/lockouts/clear", data={"csrf_token": admin_csrf, "username": username}
        )
        assert nothing.status_code == 404 and "No failed sign-ins" in nothing.text


async def test_one_address_with_many_failures_is_throttled(client_factory, runtime, monkeypatch):
    monkeypatch.setattr(runtime.settings, "login_ip_max_failures", 3)
    async with client_factory("203.0.113.7") as attacker, client_factory("203.0.113.8") as other:
        for n in range(3):
            response = await attacker.post(
                "/api/v1/auth/token", json={"username": f"spray.{n}", "password": "x"}
            )
            assert response.status_code == 401
        throttled = await attacker.post(
            "/api/v1/auth/token", json={"username": "fin.clerk", "password": PASSWORD}
        )
        assert throttled.status_code == 429 and "your address" in throttled.json()["detail"]
        assert int(throttled.headers["retry-after"]) > 0
        elsewhere = await other.post(
            "/api/v1/auth/token", json={"username": "fin.clerk", "password": PASSWORD}
        )
        assert elsewhere.status_code == 200


async def test_an_ipv6_network_cannot_spread_its_guesses_over_its_addresses(
    client_factory, runtime, monkeypatch
):
    """A host given a /64 can use a new address for every guess: the /64 is counted."""
    monkeypatch.setattr(runtime.settings, "login_ip_max_failures", 3)
    for n in range(3):
        async with client_factory(f"2001:db8:77:1::{n + 1:x}") as guesser:
            response = await guesser.post(
                "/api/v1/auth/token", json={"username": f"spray6.{n}", "password": "x"}
            )
            assert response.status_code == 401
    async with (
        client_factory("2001:db8:77:1:ffff::9") as same_network,
        client_factory("2001:db8:77:2::1") as next_network,
    ):
        throttled = await same_network.post(
            "/api/v1/auth/token", json={"username": "fin.clerk", "password": PASSWORD}
        )
        assert throttled.status_code == 429 and "your address" in throttled.json()["detail"]
        elsewhere = await next_network.post(
            "/api/v1/auth/token", json={"username": "fin.clerk", "password": PASSWORD}
        )
        assert elsewhere.status_code == 200


async def test_successful_sign_in_clears_earlier_failures(make_user, api, runtime, sessions):
    username = make_user(("finance.clerk",), "fin-payouts", "finance")
    for _ in range(runtime.settings.login_max_failures - 1):
        await api.post("/api/v1/auth/token", json={"username": username, "password": "guess"})
    assert (await token(api, username)).status_code == 200
    failed = await api.post("/api/v1/auth/token", json={"username": username, "password": "g"})
    assert failed.status_code == 401  # the count started again
    with sessions() as session:
        uncleared = session.execute(
            select(func.count())
            .select_from(LoginAttempt)
            .where(LoginAttempt.username == username, LoginAttempt.cleared_at.is_(None))
        ).scalar_one()
    assert uncleared == 1

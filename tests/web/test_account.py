"""Account pages in a real browser: MFA set-up with the QR code and signing in with a code,
being sent to enrolment by one's role, my sessions, the administrator's view, lockout."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pyotp
from playwright.async_api import Browser, Page, expect
from sqlalchemy import select

from core.db import SessionFactory
from core.models import User


def unused_code(sessions: SessionFactory, username: str, secret: str) -> str:
    totp = pyotp.TOTP(secret)
    current = totp.timecode(datetime.now(UTC))
    with sessions() as session:
        last = session.execute(
            select(User.mfa_last_step).where(User.username == username)
        ).scalar_one()
    step = current if last is None or last < current else last + 1
    assert step <= current + 1, "no unused code left in this 30-second window"
    return totp.generate_otp(step)


async def password_step(page: Page, username: str, password: str = "backoffice") -> None:
    await page.goto("/login")
    await page.get_by_label("Username").fill(username)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Sign in").click()


async def set_up_mfa(page: Page, sessions: SessionFactory, username: str) -> str:
    """From the MFA page: show the QR code, read the key, confirm with a code."""
    await page.get_by_role("button", name="Set up an authenticator").click()
    await expect(page.get_by_role("img", name="Authenticator QR code")).to_be_visible()
    secret = (await page.locator("#mfa-secret").inner_text()).strip()
    await page.get_by_label("6-digit code from the app").fill(
        unused_code(sessions, username, secret)
    )
    await page.get_by_role("button", name="Turn on").click()
    return secret


async def test_enrol_then_sign_in_with_a_code(
    page: Page, browser: Browser, live_server, make_user, sessions
):
    username = make_user(("finance.clerk",), "fin-payouts", "finance")
    await password_step(page, username)
    await expect(page).to_have_url(re.compile(r"/tasks$"))
    await page.get_by_role("link", name="My sessions and MFA").click()
    await page.get_by_role("link", name="Multi-factor authentication").click()
    await expect(page.locator("#mfa-status")).to_contain_text("Off")
    secret = await set_up_mfa(page, sessions, username)
    await expect(page.locator("#mfa-status")).to_contain_text("On since")
    await expect(page.locator("#mfa-secret")).to_have_count(0)  # never shown again

    context = await browser.new_context(base_url=live_server)
    other = await context.new_page()
    try:
        await password_step(other, username)
        await expect(other.get_by_role("heading", name="Authenticator code")).to_be_visible()
        good = unused_code(sessions, username, secret)
        await other.get_by_label("Code").fill(f"{(int(good) + 1) % 1_000_000:06d}")
        await other.get_by_role("button", name="Verify").click()
        await expect(other.get_by_role("alert")).to_contain_text("Wrong or already used")
        await other.get_by_label("Code").fill(good)
        await other.keyboard.press("Enter")
        await expect(other).to_have_url(re.compile(r"/tasks$"))
    finally:
        await context.close()


async def test_role_requiring_mfa_leads_to_enrolment_first(page: Page, make_user, sessions):
    username = make_user(("risk.rules_engineer",), "risk-rules", "risk")
    await password_step(page, username)
    await expect(page).to_have_url(re.compile(r"/account/mfa$"))
    await expect(page.get_by_role("alert")).to_contain_text("Your role requires")
    await expect(page.get_by_role("navigation", name="Main")).to_have_count(0)
    await page.goto("/tasks")
    await expect(page).to_have_url(re.compile(r"/account/mfa$"))  # nowhere else to go
    await set_up_mfa(page, sessions, username)
    await expect(page).to_have_url(re.compile(r"/tasks$"))
    await expect(page.get_by_role("navigation", name="Main")).to_be_visible()


async def test_my_sessions_lists_devices_and_revokes_one(
    page: Page, browser: Browser, live_server, make_user
):
    username = make_user(("finance.clerk",), "fin-payouts", "finance")
    context = await browser.new_context(
        base_url=live_server, user_agent="Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"
    )
    other = await context.new_page()
    try:
        await password_step(other, username)
        await expect(other).to_have_url(re.compile(r"/tasks$"))
        await password_step(page, username)
        await page.goto("/account/sessions")
        rows = page.locator("tbody tr")
        await expect(rows).to_have_count(2)
        await expect(page.get_by_text("(this session)")).to_have_count(1)
        firefox = rows.filter(has_text="Firefox on Linux")
        await expect(firefox).to_contain_text("127.0.0.1")
        await firefox.get_by_role("button", name=re.compile("^Revoke the session")).click()
        await expect(rows).to_have_count(1)
        await other.reload()
        await expect(other).to_have_url(re.compile(r"/login"))
    finally:
        await context.close()


async def test_admin_sees_lockout_and_unlocks(
    page: Page, browser: Browser, live_server, make_user, runtime
):
    username = make_user(("finance.clerk",), "fin-payouts", "finance")
    context = await browser.new_context(base_url=live_server)
    person = await context.new_page()
    try:
        for _ in range(runtime.settings.login_max_failures):
            await password_step(person, username, "guess")
        await expect(person.get_by_role("alert")).to_contain_text("this account is locked")

        await password_step(page, "admin")
        await page.goto("/account/sessions")
        await page.get_by_role("link", name="Everyone's sessions and sign-in lockouts").click()
        row = page.locator("tbody tr", has_text=username)
        await expect(row).to_contain_text("Locked until")
        await row.get_by_role("button", name=f"Unlock {username}").click()
        await expect(page.get_by_role("status").filter(has_text="Unlocked")).to_contain_text(
            username
        )

        await password_step(person, username)
        await expect(person).to_have_url(re.compile(r"/tasks$"))
    finally:
        await context.close()

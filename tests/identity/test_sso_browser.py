"""A person clicks "Sign in with single sign-on" in Chromium and lands signed in."""

from __future__ import annotations

from playwright.async_api import Page, expect

from tests.identity.conftest import Provider, user_row
from tests.identity.test_oidc import new_person


async def test_single_sign_on_by_keyboard_in_the_browser(
    page: Page, oidc_provider: Provider, sessions
):
    sub, username = new_person(oidc_provider, ["risk-analysts"], name="Robin Browser")
    await page.goto("/login?next=/tasks")
    button = page.get_by_role("link", name="Sign in with single sign-on")
    await button.focus()
    await page.keyboard.press("Enter")

    # At the identity provider: say who signs in.
    await page.wait_for_url(f"{oidc_provider.issuer}/oauth2/authorize*")
    await page.get_by_placeholder("sub").fill(sub)
    await page.get_by_role("button", name="Authorize").click()

    await page.wait_for_url("**/tasks")
    await expect(page.get_by_text("Robin Browser")).to_be_visible()
    found = user_row(sessions, username)
    assert found is not None and found[1] == {"risk.analyst"}

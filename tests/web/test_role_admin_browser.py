"""Role administration in a real browser: edit a role, see who it affects, fix a refused
permission, submit it for approval."""

from __future__ import annotations

import re

from playwright.async_api import Page, expect


async def sign_in(page: Page, username: str) -> None:
    await page.goto("/login")
    await page.get_by_label("Username").fill(username)
    await page.get_by_label("Password").fill("backoffice")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page).to_have_url(re.compile(r"/tasks$"))


async def test_edit_a_role_see_its_effect_and_submit_it(
    page: Page, live_server, make_user, snap, api, tokens
):
    role = "trading.trader_ice_hockey"
    holder = make_user((role,), "trading-desk", "trading")
    admin = make_user(("platform.admin",), "platform", "admin")
    await sign_in(page, admin)

    await page.get_by_role("link", name="Role administration").click()
    await page.get_by_role("link", name=f"Edit {role}").click()
    await expect(page.get_by_role("heading", name=f"Role {role}")).to_be_visible()
    await page.get_by_role("checkbox", name="Risk").check()
    permissions = await page.get_by_label("Permissions").input_value()
    await page.get_by_label("Permissions").fill(permissions + "\ncases:fly")
    await page.get_by_role("button", name="Show who this affects").click()
    await expect(page.get_by_role("alert")).to_contain_text("'cases' has no verb 'fly'")

    permissions = await page.get_by_label("Permissions").input_value()
    await page.get_by_label("Permissions").fill(permissions.replace("cases:fly", "cases:view"))
    await page.get_by_role("button", name="Show who this affects").click()
    affected = page.locator("#what-if")
    await expect(affected).to_contain_text("People whose access changes (1)")
    await expect(affected.get_by_role("row", name=re.compile(holder))).to_contain_text("gains risk")
    await expect(affected.get_by_role("row", name=re.compile(holder))).to_contain_text(
        "gains cases:view"
    )
    await snap("what-if")

    await page.get_by_role("button", name="Submit for approval").click()
    await expect(page.get_by_role("alert")).to_contain_text("reason")
    await page.get_by_label("Reason for the change").fill("hockey traders see fraud cases")
    await page.get_by_role("button", name="Submit for approval").click()
    await expect(page).to_have_url(re.compile(r"/requests/[0-9a-f-]{36}$"))
    request_id = page.url.rsplit("/", 1)[1]
    await expect(page.locator("main")).to_contain_text("policy.role_change")

    await page.goto(f"/admin/roles/{role}")
    awaiting = page.get_by_role("status").filter(has_text="Change awaiting approval")
    await expect(awaiting).to_be_visible()
    cancelled = await api.post(
        f"/api/v1/requests/{request_id}/cancel",
        json={"reason": "browser test done"},
        headers=await tokens.headers(admin),
    )
    assert cancelled.status_code == 200, cancelled.text

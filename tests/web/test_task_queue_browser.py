"""The task queue in a real browser: two approvers side by side, claims and new tasks
arriving live over SSE, bulk decisions, filters with inline messages."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator

import httpx
import pytest
from playwright.async_api import Browser, Page, expect

from tests.conftest import Tokens
from tests.web.test_approval_in_browser import (
    assert_not_reloaded,
    mark_page,
    request_withdrawal,
    sign_in,
)


@pytest.fixture
async def second_page(browser: Browser, live_server: str) -> AsyncIterator[Page]:
    """Another approver's browser: its own context, so its own session cookie."""
    context = await browser.new_context(
        base_url=live_server, viewport={"width": 1280, "height": 900}
    )
    context.set_default_timeout(10_000)
    try:
        yield await context.new_page()
    finally:
        with contextlib.suppress(Exception):
            await context.close()


async def test_a_claim_shows_as_taken_on_the_other_approvers_page_without_reload(
    page: Page, second_page: Page, api: httpx.AsyncClient, tokens: Tokens, new_withdrawal, snap
):
    created = await request_withdrawal(api, tokens, new_withdrawal("2500.00"), "queue claim")
    request_id = created["id"]
    await sign_in(page, "fin.manager")
    await sign_in(second_page, "fin.manager2")
    mine = page.locator(f"#task-{request_id}")
    theirs = second_page.locator(f"#task-{request_id}")
    await expect(mine).to_contain_text("Nobody yet")
    await expect(theirs).to_contain_text("Nobody yet")
    await mark_page(second_page)

    await mine.get_by_role("button", name="Claim").focus()
    await page.keyboard.press("Enter")
    await expect(mine).to_contain_text("Taken by you")
    await expect(mine.get_by_role("button", name="Release")).to_be_visible()

    await expect(theirs).to_contain_text("Taken by Fiona Manager (fin.manager)")
    await expect(theirs.get_by_role("button", name="Claim")).to_have_count(0)
    # Advisory: the other approver may still decide it.
    await expect(theirs.get_by_role("button", name="Approve")).to_be_visible()
    await assert_not_reloaded(second_page)
    await snap("1-claimed")

    await mine.get_by_role("button", name="Release").click()
    await expect(theirs).to_contain_text("Nobody yet")
    await expect(theirs.get_by_role("button", name="Claim")).to_be_visible()
    await assert_not_reloaded(second_page)

    # A new task arrives on the open page, no reload.
    arriving = await request_withdrawal(api, tokens, new_withdrawal("640.00"), "queue arrival")
    await expect(second_page.locator(f"#task-{arriving['id']}")).to_contain_text("640.00")
    await assert_not_reloaded(second_page)


async def test_team_tab_shows_who_holds_a_teammates_task(
    page: Page, second_page: Page, api: httpx.AsyncClient, tokens: Tokens, new_withdrawal
):
    created = await request_withdrawal(api, tokens, new_withdrawal("910.00"), "queue team")
    request_id = created["id"]
    await sign_in(page, "fin.clerk")
    await page.get_by_role("link", name="My team's queue").click()
    await expect(page.get_by_role("link", name="My team's queue")).to_have_attribute(
        "aria-current", "page"
    )
    row = page.locator(f"#task-{request_id}")
    await expect(row).to_contain_text("Not yours to decide")
    await mark_page(page)

    await sign_in(second_page, "fin.manager")
    await second_page.locator(f"#task-{request_id}").get_by_role("button", name="Claim").click()
    await expect(row).to_contain_text("Taken by Fiona Manager (fin.manager)")
    await assert_not_reloaded(page)


async def test_bulk_approve_from_the_page_and_its_refusal(
    page: Page, api: httpx.AsyncClient, tokens: Tokens, new_withdrawal, snap
):
    ids = [
        (await request_withdrawal(api, tokens, new_withdrawal(amount), "queue bulk"))["id"]
        for amount in ("101.00", "102.00")
    ]
    await sign_in(page, "fin.manager2")
    for request_id in ids:
        await page.locator(f"#task-{request_id}").get_by_role("checkbox").check()
    await page.get_by_label("Comment for all of them").fill("both verified")
    await page.get_by_role("button", name="Approve ticked").click()
    result = page.locator("#bulk-result")
    await expect(result).to_contain_text("2 of 2 decided")
    for request_id in ids:
        await expect(page.locator(f"#task-{request_id} .status")).to_have_text(
            re.compile(r"^Status: (Approved|Executed)$")
        )
    await snap("1-bulk-done")

    # Nothing ticked: the refusal is said in words, next to the buttons.
    await page.get_by_role("button", name="Reject ticked").click()
    await expect(result.get_by_role("alert")).to_contain_text("choose at least one task")


async def test_bad_filters_get_an_inline_message(page: Page):
    await sign_in(page, "fin.manager")
    await page.get_by_label("Amount from").fill("lots")
    await page.get_by_label("Waiting at least").fill("yesterday")
    await page.get_by_role("button", name="Apply filters").click()
    await expect(page.get_by_role("alert").first).to_contain_text("min_amount must be a number")
    await expect(page.get_by_label("Amount from")).to_have_attribute("aria-invalid", "true")
    await expect(page.locator("#err-older_than")).to_have_text(
        "must be a duration like 30m, 4h or 2d"
    )

    await page.get_by_label("Amount from").fill("100000000")
    await page.get_by_label("Waiting at least").fill("")
    await page.get_by_role("button", name="Apply filters").click()
    await expect(page.get_by_text("Nothing waits for you.")).to_be_visible()
    await expect(page).to_have_url(re.compile(r"min_amount=100000000"))

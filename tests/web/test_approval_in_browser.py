"""Approvals in a real browser: htmx swaps, inline validation, workspaces, keyboard use.

A decision's answer must survive a live update of the same request that lands while the
decision is in flight (STALE_AFTER_DECISION); the two tests at the end force that race.
"""

from __future__ import annotations

import asyncio
import contextlib
import re

import httpx
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Locator, Page, Route, expect

from tests.conftest import Tokens

WITHDRAWAL = "payment.withdrawal"
DECISION_URL = re.compile(r"/requests/[0-9a-f-]{36}/decision$")

STALE_AFTER_DECISION = (
    "a decision's answer was lost: a live refresh of the same region replaced it while the "
    "POST was in flight (app.js defers live refreshes of a busy region)"
)


async def request_withdrawal(
    api: httpx.AsyncClient, tokens: Tokens, payment_id: str, reason: str
) -> dict:
    """fin.clerk asks for the payout through the JSON API, as an integration would."""
    response = await api.post(
        "/api/v1/requests",
        json={"action": WITHDRAWAL, "target": payment_id, "params": {}, "reason": reason},
        headers=await tokens.headers("fin.clerk"),
    )
    assert response.status_code == 201, response.text
    return response.json()


async def api_status(api: httpx.AsyncClient, tokens: Tokens, request_id: str) -> str:
    response = await api.get(
        f"/api/v1/requests/{request_id}", headers=await tokens.headers("fin.clerk")
    )
    assert response.status_code == 200, response.text
    return response.json()["status"]


async def sign_in(page: Page, username: str, password: str = "backoffice") -> None:
    await page.goto("/login")
    await page.get_by_label("Username").fill(username)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page).to_have_url(re.compile(r"/tasks$"))


async def mark_page(page: Page) -> None:
    """A marker on window: gone if the browser loads a new document."""
    await page.evaluate("window.__noReload = 1")


async def assert_not_reloaded(page: Page) -> None:
    assert await page.evaluate("window.__noReload") == 1, "the page was reloaded"


async def shown_in_place(status: Locator, expected: str | re.Pattern[str]) -> bool:
    """True once `status` shows `expected`; False on the stale-Pending bug; else it fails."""
    try:
        await expect(status).to_have_text(expected)
        return True
    except AssertionError:
        if await status.count() == 1 and (await status.inner_text()).strip() == "Status: Pending":
            return False
        raise


# --- everyday flows -----------------------------------------------------------------


async def test_manager_approves_from_my_tasks_without_reload(
    page: Page, api: httpx.AsyncClient, tokens: Tokens, new_withdrawal, snap
):
    payment_id = new_withdrawal("2500.00")
    created = await request_withdrawal(api, tokens, payment_id, "player asked, KYC done")
    request_id = created["id"]

    await sign_in(page, "fin.manager")
    await expect(page.get_by_role("heading", name="My tasks", level=1)).to_be_visible()
    row = page.locator(f"#task-{request_id}")
    await expect(row).to_contain_text(payment_id)
    await expect(row).to_contain_text("fin.clerk")
    await expect(row).to_contain_text("2,500.00")
    await snap("1-my-tasks")

    await mark_page(page)
    await row.get_by_role("button", name="Approve").click()
    in_place = await shown_in_place(
        row.locator(".status"), re.compile(r"^Status: (Approved|Executed)$")
    )
    await expect(row).to_contain_text("Your decision is recorded")
    await assert_not_reloaded(page)
    await snap("2-row-after-approve")

    await row.get_by_role("link", name=re.compile(payment_id)).click()
    await expect(page).to_have_url(re.compile(f"/requests/{request_id}$"))
    await expect(page.locator("#request-status")).to_have_text("Status: Executed")
    decision = page.locator(".timeline li").filter(has_text="request.decision")
    await expect(decision).to_have_count(1)
    await expect(decision).to_contain_text("by fin.manager")
    await expect(decision).to_contain_text("via web")
    await expect(decision).to_contain_text("decision: approve")
    # Nothing left to decide: the form is gone for the approver.
    await expect(page.get_by_role("button", name="Approve")).to_have_count(0)
    assert in_place, STALE_AFTER_DECISION


async def test_new_withdrawal_form_shows_inline_errors(page: Page, new_withdrawal, snap):
    payment_id = new_withdrawal("2500.00")
    await sign_in(page, "fin.clerk")
    await page.goto("/requests/new")
    await expect(page.get_by_role("heading", name="New request")).to_be_visible()
    submit = page.get_by_role("button", name="Submit for approval")
    withdrawal = page.get_by_label("Withdrawal", exact=True)
    amount = page.get_by_label("Amount (must equal the withdrawal)")
    reason = page.get_by_label("Reason")

    # Nothing chosen, no reason.
    await mark_page(page)
    await submit.click()
    await expect(page.locator("#target-error")).to_have_text("a target is required")
    await expect(page.locator("#reason-error")).to_have_text("a reason is required")
    await expect(withdrawal).to_have_attribute("aria-invalid", "true")
    await expect(withdrawal).to_have_attribute("aria-describedby", "target-error")
    await expect(reason).to_have_attribute("aria-invalid", "true")
    await expect(reason).to_have_attribute("aria-describedby", "reason-error")
    await expect(page.locator("#amount-error")).to_have_count(0)
    # Still the form inside the normal page, not a generic error page or toast.
    await expect(page.get_by_role("heading", name="New request")).to_be_visible()
    await expect(page.get_by_role("heading", name="Not available")).to_have_count(0)
    await expect(page.locator("#toast")).to_be_empty()
    await assert_not_reloaded(page)
    await snap("1-empty-form")

    # A real withdrawal, but an amount that is not its amount.
    await withdrawal.select_option(payment_id)
    await amount.fill("2600.00")
    await reason.fill("player asked twice")
    await submit.click()
    await expect(page.locator("#amount-error")).to_have_text(
        "must equal the withdrawal amount 2500.00"
    )
    await expect(amount).to_have_attribute("aria-invalid", "true")
    await expect(page.locator("#form-error")).to_contain_text("amount does not match")
    await expect(page.locator("#target-error")).to_have_count(0)
    await expect(page.locator("#reason-error")).to_have_count(0)
    # What was typed survives the round trip.
    await expect(withdrawal).to_have_value(payment_id)
    await expect(amount).to_have_value("2600.00")
    await expect(reason).to_have_value("player asked twice")
    await assert_not_reloaded(page)
    await snap("2-wrong-amount")

    await amount.fill("2500.00")
    await submit.click()
    await expect(page).to_have_url(re.compile(r"/requests/[0-9a-f-]{36}$"))
    await expect(page.locator("#request-status")).to_have_text("Status: Pending")
    await expect(page.locator("h1")).to_contain_text(payment_id)
    await expect(page.locator(".facts")).to_contain_text("player asked twice")


async def test_sidebar_shows_only_allowed_workspaces(page: Page, snap):
    nav = page.get_by_role("navigation", name="Main")

    await sign_in(page, "fin.clerk")
    await expect(nav.get_by_role("link", name="Finance", exact=True)).to_be_visible()
    for hidden in ("Compliance", "Trading", "Risk", "CRM", "Operations"):
        await expect(nav.get_by_role("link", name=hidden, exact=True)).to_have_count(0)
    await snap("1-clerk-sidebar")

    response = await page.goto("/w/compliance")
    assert response is not None and response.status == 404
    await expect(page.get_by_role("alert")).to_have_text("Page not found.")
    await expect(page.get_by_role("heading", name=re.compile("audit trail"))).to_have_count(0)
    await snap("2-clerk-compliance-404")

    await page.context.clear_cookies()
    await sign_in(page, "comp.officer")
    await expect(nav.get_by_role("link", name="Compliance", exact=True)).to_be_visible()
    for hidden in ("Finance", "Trading"):
        await expect(nav.get_by_role("link", name=hidden, exact=True)).to_have_count(0)
    await nav.get_by_role("link", name="Compliance", exact=True).click()
    await expect(page.get_by_role("heading", name="Compliance — audit trail")).to_be_visible()


async def focused(page: Page) -> str:
    return await page.evaluate(
        "(() => { const e = document.activeElement;"
        " return e ? (e.id || e.getAttribute('type') || e.tagName.toLowerCase()) : ''; })()"
    )


async def test_login_by_keyboard(page: Page):
    await page.goto("/login")
    # The skip link may come first; autofocus may already sit on Username.
    seen = [await focused(page)]
    for _ in range(4):
        await page.keyboard.press("Tab")
        seen.append(await focused(page))
    order = [s for s in seen if s not in ("body", "a", "")]
    assert order[:3] == ["username", "password", "submit"], seen

    await page.get_by_label("Username").focus()
    await page.keyboard.type("fin.manager")
    await page.keyboard.press("Tab")
    assert await focused(page) == "password"
    await page.keyboard.type("backoffice")
    await page.keyboard.press("Tab")
    await expect(page.get_by_role("button", name="Sign in")).to_be_focused()
    # Enter in the password field submits the form.
    await page.keyboard.press("Shift+Tab")
    assert await focused(page) == "password"
    await page.keyboard.press("Enter")
    await expect(page).to_have_url(re.compile(r"/tasks$"))
    await expect(page.get_by_role("heading", name="My tasks", level=1)).to_be_visible()


async def test_manager_rejects_on_request_page_without_reload(
    page: Page, api: httpx.AsyncClient, tokens: Tokens, new_withdrawal
):
    payment_id = new_withdrawal("1200.00")
    created = await request_withdrawal(api, tokens, payment_id, "bonus abuse suspected")
    request_id = created["id"]

    await sign_in(page, "fin.manager")
    await page.goto(f"/requests/{request_id}")
    status = page.locator("#request-status")
    await expect(status).to_have_text("Status: Pending")

    await mark_page(page)
    await page.get_by_label("Comment").fill("documents do not match")
    await page.get_by_role("button", name="Reject").click()
    in_place = await shown_in_place(status, "Status: Rejected")
    await expect(page.get_by_role("button", name="Reject")).to_have_count(0)
    decision = page.locator(".timeline li").filter(has_text="request.decision")
    await expect(decision).to_contain_text("by fin.manager")
    await expect(decision).to_contain_text("comment: documents do not match")
    await assert_not_reloaded(page)
    assert await api_status(api, tokens, request_id) == "rejected"
    assert in_place, STALE_AFTER_DECISION


# --- the live-update race, made deterministic ----------------------------------------


async def hold_decisions(page: Page) -> asyncio.Event:
    """Decision POSTs wait in the browser until the returned event is set."""
    release = asyncio.Event()

    async def hold(route: Route) -> None:
        await release.wait()
        await route.continue_()

    await page.route(DECISION_URL, hold)
    return release


async def live_refresh_before_the_answer(
    page: Page, region: str, refresh_url: str, release: asyncio.Event
) -> None:
    """Play the live update that the decision's own SSE event causes, then let the POST go.

    The event stream is off in these tests (no later refresh may mask the result), so the
    refresh app.js would start is triggered by hand, at the moment that makes the race
    certain. A fixed page may queue the refresh behind the POST: waits are bounded.
    """
    await page.evaluate(
        "region => { window.__oldRegion = document.getElementById(region); }", region
    )
    with contextlib.suppress(PlaywrightError):
        async with page.expect_response(
            lambda r: r.request.method == "GET" and r.url.endswith(refresh_url), timeout=2000
        ):
            await page.evaluate(
                "region => htmx.trigger(document.getElementById(region), 'live')", region
            )
        await page.wait_for_function(
            "region => document.getElementById(region) !== window.__oldRegion",
            arg=region,
            timeout=2000,
        )
    async with page.expect_response(lambda r: DECISION_URL.search(r.url) is not None):
        release.set()


async def test_rejection_on_request_page_survives_a_live_refresh(
    page: Page, api: httpx.AsyncClient, tokens: Tokens, new_withdrawal
):
    payment_id = new_withdrawal("700.00")
    request_id = (await request_withdrawal(api, tokens, payment_id, "race on the page"))["id"]
    await page.route("**/events", lambda route: route.abort())
    release = await hold_decisions(page)

    await sign_in(page, "fin.manager")
    await page.goto(f"/requests/{request_id}")
    await expect(page.locator("#request-status")).to_have_text("Status: Pending")
    await mark_page(page)
    await page.get_by_role("button", name="Reject").click()
    await live_refresh_before_the_answer(page, "request-body", f"/requests/{request_id}", release)

    assert await api_status(api, tokens, request_id) == "rejected"
    await assert_not_reloaded(page)
    await expect(page.locator("#request-status")).to_have_text("Status: Rejected", timeout=2000)


async def test_rejection_in_task_row_survives_a_live_refresh(
    page: Page, api: httpx.AsyncClient, tokens: Tokens, new_withdrawal
):
    payment_id = new_withdrawal("800.00")
    request_id = (await request_withdrawal(api, tokens, payment_id, "race in the row"))["id"]
    await page.route("**/events", lambda route: route.abort())
    release = await hold_decisions(page)

    await sign_in(page, "fin.manager")
    row = page.locator(f"#task-{request_id}")
    await expect(row).to_contain_text(payment_id)
    await mark_page(page)
    await row.get_by_role("button", name="Reject").click()
    await live_refresh_before_the_answer(
        page, f"task-{request_id}", f"/requests/{request_id}/task-row", release
    )

    assert await api_status(api, tokens, request_id) == "rejected"
    await assert_not_reloaded(page)
    await expect(row.locator(".status")).to_have_text("Status: Rejected", timeout=2000)


# --- live updates over server-sent events ---------------------------------------------


async def test_new_task_arrives_live_and_a_decision_elsewhere_updates_the_row(
    page: Page, api: httpx.AsyncClient, tokens: Tokens, new_withdrawal
):
    """No reload: a request submitted elsewhere appears; another manager's decision shows."""
    await sign_in(page, "fin.manager")
    # The suite's other requests share this queue: look at this amount only (the filter
    # stays on for live refreshes), so they cannot push the new task off the page.
    await page.goto("/tasks?min_amount=615&max_amount=615")
    await expect(page.get_by_role("heading", name="My tasks")).to_be_visible()
    await mark_page(page)
    payment_id = new_withdrawal("615.00")
    request_id = (await request_withdrawal(api, tokens, payment_id, "arrives live"))["id"]
    row = page.locator(f"#task-{request_id}")
    await expect(row).to_contain_text(payment_id, timeout=10_000)

    decided = await api.post(
        f"/api/v1/requests/{request_id}/decision",
        json={"decision": "approve", "comment": "taken by a colleague"},
        headers=await tokens.headers("fin.manager2"),
    )
    assert decided.status_code == 200
    await expect(row.locator(".status")).to_have_text("Status: Executed", timeout=10_000)
    await expect(row).not_to_contain_text("Your decision is recorded")
    await assert_not_reloaded(page)

"""The one New request form for every catalogue action: its fields come from the policy's
params, it previews the approval path, and every refusal lands next to its field."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from urllib.parse import urlencode

import httpx
import pytest
from playwright.async_api import Page, expect
from sqlalchemy import func, select

from api.app import create_app
from core.db import SessionFactory
from core.models import ApprovalRequest
from core.runtime import Runtime
from tests.api.test_auth import web_login
from tests.api.test_catalogue import Platform
from tests.conftest import sign_in_and_open
from tests.web.test_approval_in_browser import assert_not_reloaded, mark_page, sign_in

# Names every form posts whatever the action; the rest are the action's own params.
COMMON_FIELDS = {"csrf_token", "action", "fields_for", "target", "reason"}
VOID_TAGS = {"input", "br", "hr", "img", "meta", "link"}


# --- reading the HTML the way a browser would -----------------------------------------


@dataclass
class Control:
    tag: str
    attrs: dict[str, str]
    options: list[tuple[str, bool]] = field(default_factory=list)  # (value, selected)
    text: str = ""

    @property
    def value(self) -> str:
        if self.tag == "select":
            return next((v for v, chosen in self.options if chosen), "")
        if self.tag == "textarea":
            return self.text
        return self.attrs.get("value", "")


class FormReader(HTMLParser):
    """The controls of #request-form by name, labels by `for`, and elements by id."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.controls: dict[str, Control] = {}
        self.labels: dict[str, str] = {}
        self.texts: dict[str, str] = {}
        self._open: Control | None = None
        self._label_for: str | None = None
        self._ids: list[tuple[str, str]] = []  # (tag, id) of open elements with an id
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {k: v or "" for k, v in attrs}
        if "id" in found and tag not in VOID_TAGS:
            self._ids.append((tag, found["id"]))
            self.texts.setdefault(found["id"], "")
        if tag in ("input", "select", "textarea") and "name" in found:
            control = Control(tag, found)
            self.controls[found["name"]] = control
            if tag != "input":
                self._open = control
        elif tag == "option" and self._open is not None:
            self._open.options.append((found.get("value", ""), "selected" in found))
        elif tag == "label":
            self._label_for = found.get("for")
            self.labels.setdefault(self._label_for or "", "")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("select", "textarea"):
            self._open = None
        if tag == "label":
            self._label_for = None
        if self._ids and self._ids[-1][0] == tag:
            self._ids.pop()

    def handle_data(self, data: str) -> None:
        if self._label_for is not None:
            self.labels[self._label_for] += data
        if self._open is not None and self._open.tag == "textarea":
            self._open.text += data
        for _, element_id in self._ids:
            self.texts[element_id] += data

    def params(self) -> set[str]:
        return set(self.controls) - COMMON_FIELDS

    def label_of(self, name: str) -> str:
        return self.labels.get(self.controls[name].attrs["id"], "").strip()

    def text(self, element_id: str) -> str:
        return " ".join(self.texts.get(element_id, "").split())


# --- signed-in clients ---------------------------------------------------------------


@dataclass
class WebUser:
    client: httpx.AsyncClient
    csrf: str

    async def get(self, path: str, query: dict[str, str] | None = None, **kw) -> httpx.Response:
        url = f"{path}?{urlencode(query)}" if query else path
        return await self.client.get(url, **kw)

    async def submit(self, form: dict[str, str], **kw) -> httpx.Response:
        return await self.client.post("/requests/new", data={**form, "csrf_token": self.csrf}, **kw)


@pytest.fixture
async def web_as(runtime: Runtime, worker) -> AsyncIterator[Callable[[str], Awaitable[WebUser]]]:
    """`await web_as("ops.agent")`: a client with that person's web session (own cookies)."""
    async with contextlib.AsyncExitStack() as stack:
        app = create_app(runtime)

        async def open_as(username: str) -> WebUser:
            client = await stack.enter_async_context(
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app),
                    base_url="http://testserver",
                    follow_redirects=False,
                )
            )
            return WebUser(client, await web_login(client, username))

        yield open_as


@pytest.fixture
def platform(sessions: SessionFactory) -> Platform:
    return Platform(sessions)


def request_count(sessions: SessionFactory) -> int:
    with sessions() as session:
        return session.execute(select(func.count()).select_from(ApprovalRequest)).scalar_one()


def in_hours(hours: float) -> str:
    """A datetime-local value (UTC), as the browser sends it."""
    return (datetime.now(UTC) + timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M")


# --- the fields of each action ---------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "action", "target_label", "params"),
    [
        ("fin.clerk", "payment.withdrawal", "Withdrawal", {"amount"}),
        ("ops.agent", "player.limit_override", "Player ID", {"limit", "value", "until"}),
        ("trading.trader", "market.odds_adjustment", "Market ID", {"selection", "price"}),
        ("risk.analyst", "risk_rule.change", "Risk rule ID", {"setting", "threshold", "enabled"}),
        ("crm.manager", "bonus.budget_change", "Campaign ID", {"budget"}),
    ],
)
async def test_form_shows_exactly_the_fields_of_the_action(
    web_as, user, action, target_label, params
):
    me = await web_as(user)
    page = await me.get("/requests/new", {"action": action})
    assert page.status_code == 200, page.text
    form = FormReader(page.text)
    # Derived values (change_percent) are the server's to work out: never an input.
    assert form.params() == params
    assert form.label_of("target") == target_label
    assert form.controls["action"].value == action
    assert "change_percent" not in page.text


async def test_field_types_follow_the_param_definitions(web_as):
    me = await web_as("ops.agent")
    form = FormReader((await me.get("/requests/new", {"action": "player.limit_override"})).text)

    limit = form.controls["limit"]
    assert limit.tag == "select"
    assert [v for v, _ in limit.options] == [
        "",
        "daily_deposit_limit",
        "daily_loss_limit",
        "session_limit_minutes",
    ]
    value = form.controls["value"]
    assert (value.attrs["type"], value.attrs["min"], value.attrs["max"], value.attrs["step"]) == (
        "number",
        "1",
        "1000000",
        "0.01",
    )
    assert "required" in value.attrs
    assert form.label_of("value") == "New value"
    until = form.controls["until"]
    assert until.attrs["type"] == "datetime-local"
    assert "required" not in until.attrs  # optional: empty means a permanent change
    assert "in UTC" in form.text(until.attrs["aria-describedby"])
    assert "Permanent unless “Revert at” is set" in form.text("approval-path")

    trader = await web_as("trading.trader")
    odds = FormReader(
        (await trader.get("/requests/new", {"action": "market.odds_adjustment"})).text
    )
    price = odds.controls["price"]
    assert (price.attrs["type"], price.attrs["min"], price.attrs["max"]) == (
        "number",
        "1.01",
        "1000",
    )
    assert odds.label_of("price") == "New price"


async def test_only_requestable_actions_are_offered(web_as):
    agent = await web_as("ops.agent")
    form = FormReader((await agent.get("/requests/new")).text)
    offered = [v for v, _ in form.controls["action"].options]
    assert offered == ["player.suspend", "player.close", "player.limit_override"]
    # The first requestable action is chosen; it has no params, only its target.
    assert form.controls["action"].value == "player.suspend"
    assert form.params() == set()


# --- prefill from the query string -----------------------------------------------------


async def test_query_string_prefills_the_form(web_as, platform):
    player = platform.player()
    until = in_hours(48)
    me = await web_as("ops.agent")
    page = await me.get(
        "/requests/new",
        {
            "action": "player.limit_override",
            "target": player,
            "limit": "daily_loss_limit",
            "value": "250",
            "until": until + ":00+00:00",
            "reason": "player asked for a cooling-off",
            "change_percent": "99",  # derived: ignored
        },
    )
    assert page.status_code == 200
    form = FormReader(page.text)
    assert form.controls["target"].value == player
    assert form.controls["limit"].value == "daily_loss_limit"
    assert form.controls["value"].value == "250"
    assert form.controls["until"].value == until  # as datetime-local, in UTC
    assert form.controls["reason"].value == "player asked for a cooling-off"
    shown = datetime.strptime(until, "%Y-%m-%dT%H:%M").strftime("%Y-%m-%d %H:%M UTC")
    assert f"Reverts automatically at {shown}." in form.text("approval-path")


async def test_withdrawal_link_from_the_finance_workspace_prefills_the_picker(
    web_as, new_withdrawal
):
    payment_id = new_withdrawal("1500.00")
    me = await web_as("fin.clerk")
    form = FormReader((await me.get("/requests/new", {"target": payment_id})).text)
    assert form.controls["target"].value == payment_id
    assert form.controls["amount"].value == ""  # the server takes the withdrawal's amount


async def test_switching_action_keeps_a_target_of_the_same_kind_only(web_as, platform):
    player = platform.player()
    me = await web_as("ops.agent")
    same_kind = await me.get(
        "/requests/new/fields",
        {"action": "player.close", "fields_for": "player.suspend", "target": player},
        headers={"HX-Request": "true"},
    )
    assert same_kind.status_code == 200
    assert "<html" not in same_kind.text  # the fragment only
    assert FormReader(same_kind.text).controls["target"].value == player
    assert FormReader(same_kind.text).controls["fields_for"].value == "player.close"

    trader = await web_as("trading.trader")
    other_kind = await trader.get(
        "/requests/new/fields",
        {"action": "market.status", "fields_for": "market.odds_adjustment", "target": "X"},
    )
    assert FormReader(other_kind.text).controls["target"].value == "X"
    moved = await me.get(
        "/requests/new/fields",
        {"action": "player.limit_override", "fields_for": "player.close", "value": "5"},
    )
    assert FormReader(moved.text).controls["value"].value == ""  # params of another action


# --- refusals, inline, nothing written ------------------------------------------------


async def test_action_not_allowed_in_query_string_is_an_inline_message(web_as, sessions):
    clerk = await web_as("fin.clerk")
    page = await clerk.get("/requests/new", {"action": "player.close", "target": "PLR-1"})
    assert page.status_code == 403
    form = FormReader(page.text)
    assert "You may not request 'player.close'" in form.text("action-error")
    assert form.controls["action"].attrs["aria-describedby"] == "action-error"
    assert [v for v, _ in form.controls["action"].options] == ["", "payment.withdrawal"]
    assert "target" not in form.controls  # no fields of an action one may not request
    assert 'role="alert"' in page.text

    unknown = await clerk.get("/requests/new", {"action": "payment.teleport"})
    assert unknown.status_code == 422
    assert "not an action of the catalogue" in FormReader(unknown.text).text("action-error")

    before = request_count(sessions)
    posted = await clerk.submit(
        {"action": "player.close", "target": "PLR-1", "reason": "try anyway"}
    )
    assert posted.status_code == 403
    assert "player.close:request" in FormReader(posted.text).text("action-error")
    assert request_count(sessions) == before


@dataclass(frozen=True)
class BadInput:
    params: dict[str, str]
    field: str
    message: str
    status: int = 422
    player_status: str = "active"
    target: str | None = None


BAD_INPUTS = {
    "out_of_range": BadInput({"value": "0"}, "value", "must be between 1 and 1000000"),
    "non_numeric": BadInput({"value": "lots"}, "value", "must be a number"),
    "past_datetime": BadInput({"until": in_hours(-2)}, "until", "must be in the future"),
    "unknown_choice": BadInput({"limit": "weekly"}, "limit", "must be one of"),
    "unknown_target": BadInput({}, "target", "not found", target="PLR-NOSUCH"),
    "closed_account": BadInput(
        {}, "target", "is closed; the account cannot be changed", 409, "closed"
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
async def test_bad_input_is_shown_on_its_field_and_writes_nothing(
    web_as, platform, sessions, case: BadInput
):
    player = case.target or platform.player(status=case.player_status)
    me = await web_as("ops.agent")
    form = {
        "action": "player.limit_override",
        "fields_for": "player.limit_override",
        "target": player,
        "limit": "daily_deposit_limit",
        "value": "500",
        "until": "",
        "reason": "responsible gaming review",
        **case.params,
    }
    before = request_count(sessions)
    for headers in ({}, {"HX-Request": "true"}):
        response = await me.submit(form, headers=headers)
        assert response.status_code == case.status, response.text
        page = FormReader(response.text)
        assert case.message in page.text(f"{case.field}-error")
        control = page.controls[case.field]
        assert control.attrs["aria-invalid"] == "true"
        assert f"{case.field}-error" in control.attrs["aria-describedby"].split()
        # The summary at the top names the field and links to it.
        assert case.message in page.text("form-error")
        assert f'href="#{control.attrs["id"]}"' in response.text
        # What was typed survives the round trip.
        assert page.controls["reason"].value == "responsible gaming review"
        assert page.controls["target"].value == player
    assert request_count(sessions) == before


async def test_wrong_withdrawal_amount_is_shown_on_the_amount(web_as, new_withdrawal, sessions):
    payment_id = new_withdrawal("300.00")
    me = await web_as("fin.clerk")
    before = request_count(sessions)
    response = await me.submit(
        {"action": "payment.withdrawal", "target": payment_id, "amount": "301", "reason": "x"}
    )
    assert response.status_code == 422
    assert (
        FormReader(response.text).text("amount-error") == "must equal the withdrawal amount 300.00"
    )
    assert request_count(sessions) == before


# --- success ----------------------------------------------------------------------------


async def test_permitted_request_is_created_and_opens_its_page(web_as, platform, sessions):
    player = platform.player()
    me = await web_as("ops.agent")
    before = request_count(sessions)
    response = await me.submit(
        {
            "action": "player.limit_override",
            "fields_for": "player.limit_override",
            "target": player,
            "limit": "daily_loss_limit",
            "value": "150",
            "until": in_hours(24),
            "reason": "self-exclusion cooling period",
        }
    )
    assert response.status_code == 303, response.text
    location = response.headers["location"]
    assert re.fullmatch(r"/requests/[0-9a-f-]{36}", location)
    assert request_count(sessions) == before + 1
    shown = await me.get(location)
    assert shown.status_code == 200
    assert player in shown.text
    assert "self-exclusion cooling period" in shown.text


# --- the approval path preview ----------------------------------------------------------


def path_steps(html: str) -> list[str]:
    return [" ".join(s.split()) for s in re.findall(r"<li><strong>(.*?)</strong>", html)]


async def test_approval_path_follows_the_withdrawal_amount(web_as, new_withdrawal):
    me = await web_as("fin.clerk")
    query = {"action": "payment.withdrawal", "fields_for": "payment.withdrawal"}
    below = await me.get("/requests/new/path", {**query, "amount": "9999.99"})
    assert below.status_code == 200
    assert path_steps(below.text) == ["Finance manager approval"]
    assert "Tier <strong>standard</strong>" in below.text
    assert "from finance.manager; SLA 4h" in below.text

    at = await me.get("/requests/new/path", {**query, "amount": "10000"})
    assert path_steps(at.text) == ["Finance manager approval", "Finance director approval"]
    assert "from finance.director; SLA 8h" in at.text

    # Not a number yet: the first tier, as for a missing value.
    typing = await me.get("/requests/new/path", {**query, "amount": "12,0"})
    assert path_steps(typing.text) == ["Finance manager approval"]

    # No amount typed: the chosen withdrawal's own amount decides.
    large = new_withdrawal("15000.00")
    picked = await me.get("/requests/new/path", {**query, "target": large})
    assert path_steps(picked.text) == ["Finance manager approval", "Finance director approval"]


async def test_approval_path_uses_the_change_size_the_server_derives(web_as, platform):
    campaign = platform.campaign(budget="10000.00", spend="2000.00")
    me = await web_as("crm.manager")
    query = {"action": "bonus.budget_change", "fields_for": "bonus.budget_change"}
    unknown_yet = await me.get("/requests/new/path", {**query, "budget": "50000"})
    assert path_steps(unknown_yet.text) == ["CRM lead approval"]
    assert "until the campaign and the values are filled in" in unknown_yet.text

    small = await me.get("/requests/new/path", {**query, "target": campaign, "budget": "11000"})
    assert path_steps(small.text) == ["CRM lead approval"]
    large = await me.get("/requests/new/path", {**query, "target": campaign, "budget": "20000"})
    assert path_steps(large.text) == ["CRM lead approval", "Finance sign-off"]
    assert "nobody from your team may approve this step" in large.text


# --- in the browser, by keyboard ------------------------------------------------------


async def test_switch_action_by_keyboard_fill_and_submit(page: Page, platform, snap):
    player = platform.player()
    await sign_in(page, "ops.agent")
    await page.goto("/requests/new")
    await expect(page.get_by_label("Player ID")).to_be_visible()
    await expect(page.get_by_label("New value")).to_have_count(0)
    await mark_page(page)

    action = page.get_by_label("Action")
    await action.focus()
    await page.keyboard.press("ArrowDown")  # player.close
    await page.keyboard.press("ArrowDown")  # player.limit_override
    await expect(page.get_by_label("New value")).to_be_visible()
    await expect(page.get_by_label("Limit", exact=True)).to_be_visible()
    await expect(page.get_by_label("Revert at")).to_have_attribute("type", "datetime-local")
    await expect(page.locator("#approval-path")).to_contain_text(
        "Two of the responsible-gaming approvers"
    )
    await expect(action).to_be_focused()
    await assert_not_reloaded(page)
    await snap("1-limit-override-fields")

    await page.keyboard.press("Tab")
    await expect(page.get_by_label("Player ID")).to_be_focused()
    await page.keyboard.type(player)
    await page.keyboard.press("Tab")
    await expect(page.get_by_label("Limit", exact=True)).to_be_focused()
    await page.get_by_label("Limit", exact=True).select_option("daily_deposit_limit")
    await page.get_by_label("New value").fill("200")
    await page.get_by_label("Revert at").fill(in_hours(72))
    await expect(page.locator("#approval-path")).to_contain_text("Reverts automatically at")
    await page.get_by_label("Reason").fill("player asked for a lower limit")
    await snap("2-filled")
    await page.get_by_label("Reason").press("Tab")
    await expect(page.get_by_role("button", name="Submit for approval")).to_be_focused()
    await page.keyboard.press("Enter")

    await expect(page).to_have_url(re.compile(r"/requests/[0-9a-f-]{36}$"))
    await expect(page.locator("#request-status")).to_have_text("Status: Pending")
    await expect(page.locator("h1")).to_contain_text(player)


async def test_the_request_form_offers_the_payouts_that_came_in_last_first(
    web: httpx.AsyncClient, new_withdrawal
):
    older, newer = new_withdrawal("120.00"), new_withdrawal("130.00")
    page = await sign_in_and_open(web, "fin.clerk", "/requests/new?action=payment.withdrawal")
    assert page.status_code == 200
    offered = re.findall(r'<option value="(PAY-[^"]+)"', page.text)
    assert offered.index(newer) < offered.index(older)
    assert offered[0] == newer  # nothing came in after it

"""Live updates: a change reaches only the pages of people whose data scope holds it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import httpx
import psycopg
import pytest

from core.events import EVENTS_CHANNEL, change_for
from policies.snapshot import EVERY, DataScope
from tests.conftest import Tokens, sign_in_and_open

UK_ONLY = DataScope(regions=frozenset({"UK"}), segments=EVERY, max_amount=None)
DE_ONLY = DataScope(regions=frozenset({"DE"}), segments=EVERY, max_amount=None)


@pytest.fixture
def listener(database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"LISTEN {EVENTS_CHANNEL}")
        yield conn


def changes_of(conn: psycopg.Connection, request_id: str) -> list[dict[str, object]]:
    found = [json.loads(notice.payload) for notice in conn.notifies(timeout=2.0)]
    return [change for change in found if change["request_id"] == request_id]


async def test_a_change_carries_the_players_region_and_reaches_only_that_scope(
    api, tokens: Tokens, new_withdrawal, listener
):
    created = await api.post(
        "/api/v1/requests",
        json={
            "action": "payment.withdrawal",
            "target": new_withdrawal("300.00"),  # a UK player's, regular segment
            "params": {},
            "reason": "live update",
        },
        headers=await tokens.headers("fin.clerk"),
    )
    assert created.status_code == 201, created.text
    request_id = created.json()["id"]

    [submitted, *_] = changes_of(listener, request_id)
    assert submitted["region"] == "UK" and submitted["segment"] == "regular"
    payload = json.dumps(submitted)
    assert change_for(DE_ONLY, payload) is None  # a German desk hears nothing of it
    told = change_for(UK_ONLY, payload)
    assert told is not None
    # Pages learn which request changed and how, not whose player it is.
    assert json.loads(told) == {"request_id": request_id, "kind": submitted["kind"]}


def test_changes_without_a_player_reach_every_scope_and_junk_reaches_none():
    role_change = json.dumps(
        {"request_id": "r-1", "kind": "submitted", "region": None, "segment": None}
    )
    assert change_for(DE_ONLY, role_change) is not None
    for junk in ("", "not json", "[]", '{"kind": "x"}'):
        assert change_for(UK_ONLY, junk) is None


async def submit(api, tokens: Tokens, username: str, payment_id: str) -> str:
    created = await api.post(
        "/api/v1/requests",
        json={"action": "payment.withdrawal", "target": payment_id, "params": {}, "reason": "r"},
        headers=await tokens.headers(username),
    )
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


async def test_the_event_stream_of_a_german_desk_carries_no_uk_change(
    live_server, api, tokens: Tokens, new_withdrawal
):
    async with httpx.AsyncClient(base_url=live_server, follow_redirects=True) as desk:
        await sign_in_and_open(desk, "fin.clerk_de", "/tasks")
        heard: list[str] = []

        async def listen() -> None:
            async with desk.stream("GET", "/events", timeout=30) as stream:
                async for line in stream.aiter_lines():
                    heard.append(line)

        listening = asyncio.create_task(listen())
        try:
            await asyncio.sleep(0.5)  # subscribed before the changes happen
            uk = await submit(api, tokens, "fin.clerk", new_withdrawal("150.00"))
            de = await submit(api, tokens, "fin.clerk_de", new_withdrawal("200.00", region="DE"))
            async with asyncio.timeout(15):
                while not any(de in line for line in heard):
                    await asyncio.sleep(0.1)
        finally:
            listening.cancel()
    # Changes arrive in commit order: the UK one, had it been forwarded, came first.
    assert not any(uk in line for line in heard), heard

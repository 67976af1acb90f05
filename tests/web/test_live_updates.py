"""Live updates: a change reaches only the pages of people whose data scope holds it."""

from __future__ import annotations

import json
from collections.abc import Iterator

import psycopg
import pytest

from core.events import EVENTS_CHANNEL, change_for
from policies.snapshot import EVERY, DataScope
from tests.conftest import Tokens

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

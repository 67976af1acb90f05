"""Property tests of data scope: for random principals (random regions, segments and money
limits) over a fixed set of players, payments and requests, no list returns a row outside
the scope, and submission and decision refuse exactly when `within_scope` refuses.

Runs without hypothesis's pytest plugin (see pyproject); each property keeps its examples
few enough that the file finishes well within a minute.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from core import request_service
from core.db import SessionFactory, transaction
from core.models import ApprovalRequest, Player
from core.repositories.requests import TaskFilters
from core.request_service import NewRequest, OutOfScope
from core.runtime import Runtime
from core.task_service import queue_rows
from policies.engine import within_scope
from policies.snapshot import DataScope, Principal
from tests.conftest import Tokens
from tests.properties.conftest import (
    WITHDRAWAL,
    World,
    all_pages,
    in_scope,
    new_user,
    principal_of,
    scopes,
)
from web.routes import Viewer
from web.workspaces import ListContext, Listing, list_payments, list_players


@settings(max_examples=40, deadline=None)
@given(scope=scopes)
def test_workspace_pages_show_only_players_and_payments_in_scope(
    sessions: SessionFactory, runtime: Runtime, world: World, scope: DataScope
) -> None:
    principal = principal_of(world.approver, {"finance.manager", "operations.lead"}, scope)
    viewer = Viewer(world.approver, principal, csrf_token="", cookie="", workspaces=[])
    with sessions() as session:

        def page(load: Callable[[ListContext], Listing], values: dict[str, str]):
            return lambda cursor: load(ListContext(session, runtime, viewer, values, cursor))

        players = list(all_pages(page(list_players, {})))
        payments = list(all_pages(page(list_payments, {"status": "pending", "kind": "withdrawal"})))

    assert all(in_scope(scope, player) for player in players)
    assert all(in_scope(scope, row.player) for row in payments)
    # Nothing in scope is missing either: the filter is the scope, not something narrower.
    shown_players = {p.id for p in players}
    assert {i for i, p in world.players.items() if in_scope(scope, p)} <= shown_players
    shown_payments = {row.payment.id for row in payments}
    expected = {
        i
        for i, pay in {**world.requested, **world.free}.items()
        if in_scope(scope, world.players[pay.player_id])
    }
    assert expected <= shown_payments


@settings(max_examples=40, deadline=None)
@given(scope=scopes)
def test_the_task_queue_holds_only_requests_in_scope_and_within_the_limit(
    sessions: SessionFactory, runtime: Runtime, world: World, scope: DataScope
) -> None:
    principal = principal_of(world.approver, {"finance.manager"}, scope)
    with sessions() as session:
        rows = queue_rows(
            runtime, session, world.approver, principal, "mine", TaskFilters(), limit=10_000
        )

    for row in rows:
        request = row.request
        assert within_scope(
            scope, region=request.region, segment=request.segment, amount=request.amount
        ), (request.target, request.region, request.segment, request.amount)
    shown = {row.request.target for row in rows}
    expected = {
        payment_id
        for payment_id, payment in world.requested.items()
        if in_scope(scope, world.players[payment.player_id], payment.amount)
    }
    assert expected <= shown


@settings(max_examples=60, deadline=None)
@given(scope=scopes, data=st.data())
def test_submission_is_refused_exactly_when_within_scope_refuses(
    sessions: SessionFactory, runtime: Runtime, world: World, scope: DataScope, data: st.DataObject
) -> None:
    if data.draw(st.booleans(), label="withdrawal"):
        payment = data.draw(st.sampled_from(sorted(world.free.values(), key=lambda p: p.id)))
        action, target, amount = WITHDRAWAL, payment.id, payment.amount
        player = world.players[payment.player_id]
        roles = {"finance.clerk"}
    else:
        player = data.draw(st.sampled_from(sorted(world.players.values(), key=lambda p: p.id)))
        action, target, amount, roles = "player.suspend", player.id, None, {"operations.agent"}
    principal = principal_of(world.requester, roles, scope)
    expected = within_scope(scope, region=player.region, segment=player.segment, amount=amount)

    with sessions() as session:
        try:
            request_service._prepare(
                session, runtime, principal, NewRequest(action, target, {}, "property test")
            )
        except OutOfScope as refused:
            assert not expected
            assert (refused.status, refused.code, refused.detail) == (
                403,
                expected.code,
                expected.reason,
            )
        else:
            assert expected, expected.reason
        assert not session.new and not session.dirty  # nothing written


@settings(max_examples=60, deadline=None)
@given(scope=scopes, data=st.data())
def test_a_decision_is_refused_exactly_when_within_scope_refuses(
    sessions: SessionFactory, runtime: Runtime, world: World, scope: DataScope, data: st.DataObject
) -> None:
    request_id = data.draw(st.sampled_from(world.requests))
    principal = principal_of(world.approver, {"finance.manager"}, scope)
    with sessions() as session:
        request = session.get(ApprovalRequest, request_id)
        assert request is not None
        verdict, approver = request_service.decision_eligibility(
            session, runtime, principal, request
        )
        player = world.players[world.requested[request.target].player_id]
        expected = within_scope(
            scope, region=player.region, segment=player.segment, amount=request.amount
        )

    assert (bool(verdict), verdict.code, verdict.reason) == (
        bool(expected),
        "allowed" if expected else expected.code,
        "allowed" if expected else expected.reason,
    )
    assert approver is not None and approver.scopes == (scope,)


ROLES_THAT_SEE_PAYMENTS = (
    "finance.payments_clerk_uk",
    "finance.payments_clerk_de",
    "finance.payments_clerk_nordics",
    "finance.payments_clerk_south",
    "finance.payments_clerk_ca",
    "finance.vip_payments",
    "finance.clerk",
)


async def test_the_payments_api_lists_only_the_callers_scope(
    api: Any, tokens: Tokens, sessions: SessionFactory, runtime: Runtime, world: World
) -> None:
    """Random real users (random sets of scoped roles) through GET /api/v1/payments."""
    loop = asyncio.get_running_loop()
    # Roles that sign in with a password alone (the others need an authenticator code).
    roles_defined = runtime.policy.roles.roles
    password_only = [r for r in ROLES_THAT_SEE_PAYMENTS if not roles_defined[r].mfa_required]

    async def listed(username: str) -> list[dict[str, Any]]:
        headers = await tokens.headers(username)
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            query = {"status": "pending", "limit": "200", **({"cursor": cursor} if cursor else {})}
            response = await api.get("/api/v1/payments", params=query, headers=headers)
            assert response.status_code == 200, response.text
            items += response.json()["items"]
            if (cursor := response.json()["next"]) is None:
                return items

    @settings(max_examples=15, deadline=None)
    @given(roles=st.frozensets(st.sampled_from(password_only), min_size=1))
    def check(roles: frozenset[str]) -> None:
        with transaction(sessions) as session:
            user = new_user(session, tuple(sorted(roles)), "prop-viewers")
        scope = runtime.policy.scope_of(Principal(user.id, user.username, roles))
        items = asyncio.run_coroutine_threadsafe(listed(user.username), loop).result()
        for item in items:
            with sessions() as session:
                player = session.get(Player, item["player_id"])
                assert player is not None
            assert in_scope(scope, player), (sorted(roles), item)
        shown = {item["id"] for item in items}
        assert {
            i
            for i, pay in {**world.requested, **world.free}.items()
            if in_scope(scope, world.players[pay.player_id])
        } <= shown

    await asyncio.to_thread(check)

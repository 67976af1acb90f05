"""Property tests of data scope: for random principals (random regions, segments and money
limits) over a fixed set of players, payments and requests, no list returns a row outside
the scope, and submission and decision refuse exactly when `within_scope` refuses.

Runs without hypothesis's pytest plugin (see pyproject); each property keeps its examples
few enough that the file finishes well within a minute.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session

from core import request_service
from core.db import SessionFactory, transaction
from core.models import ApprovalRequest, Payment, Player, User
from core.repositories import requests as requests_repo
from core.repositories import users as users_repo
from core.repositories.requests import TaskFilters
from core.request_service import NewRequest, OutOfScope
from core.runtime import Runtime
from core.task_service import queue_rows
from policies.engine import within_scope
from policies.snapshot import EVERY, DataScope, Principal
from tests.conftest import TEST_PASSWORD_HASH, Tokens
from web.routes import Viewer
from web.workspaces import ListContext, Listing, list_payments, list_players

REGIONS = ("UK", "DE", "SE", "MT", "ES", "CA", "IE", "NL")
SEGMENTS = ("casual", "regular", "high_value", "bonus_hunter", "new")
# Around the roles' limits (5,000 ... 500,000) and the chain's 10,000 tier boundary.
AMOUNTS = ("40.00", "5000.00", "9999.99", "25000.00", "25000.01", "120000.00", "600000.00")
WITHDRAWAL = "payment.withdrawal"

scopes = st.builds(
    DataScope,
    regions=st.one_of(st.just(EVERY), st.frozensets(st.sampled_from(REGIONS))),
    segments=st.one_of(st.just(EVERY), st.frozensets(st.sampled_from(SEGMENTS))),
    max_amount=st.one_of(
        st.none(),
        # Exactly an amount of the world, or a cent below it: where an off-by-one shows.
        st.sampled_from([Decimal(a) - cent for a in AMOUNTS for cent in (0, Decimal("0.01"))]),
        st.decimals(min_value=0, max_value=1_000_000, places=2),
    ),
)


@dataclass(frozen=True)
class World:
    """One player per region and segment, each with a withdrawal that is waiting for a
    finance manager's approval and one that nobody has asked for yet."""

    players: dict[str, Player]
    requested: dict[str, Payment]  # payment id -> payment with an open request
    free: dict[str, Payment]  # payment id -> payment without a request
    requests: list[uuid.UUID]
    requester: User
    approver: User


def _user(session: Session, roles: tuple[str, ...], team: str | None) -> User:
    return users_repo.create(
        session,
        username=f"p.{secrets.token_hex(4)}",
        display_name="Property tester",
        department="finance",
        password_hash=TEST_PASSWORD_HASH,
        roles=roles,
        team=team,
    )


@pytest.fixture(scope="module")
def world(sessions: SessionFactory, runtime: Runtime) -> World:
    tag = secrets.token_hex(3).upper()
    amounts = itertools.cycle(AMOUNTS)
    now = datetime.now(UTC)
    players: dict[str, Player] = {}
    requested: dict[str, Payment] = {}
    free: dict[str, Payment] = {}
    request_ids: list[uuid.UUID] = []
    with transaction(sessions) as session:
        requester = _user(session, ("finance.clerk",), "prop-requesters")
        approver = _user(session, ("finance.manager",), None)
        for region, segment in itertools.product(REGIONS, SEGMENTS):
            player = Player(
                id=f"PLR-P{tag}{region}{segment[:3].upper()}",
                username=f"prop-{tag}-{region}-{segment}",
                region=region,
                segment=segment,
                vip_tier="none",
                status="active",
            )
            session.add(player)
            session.flush()
            players[player.id] = player
            for kind, target in (("R", requested), ("F", free)):
                payment = Payment(
                    id=f"PAY-{kind}{tag}{region}{segment[:3].upper()}",
                    player_id=player.id,
                    kind="withdrawal",
                    amount=Decimal(next(amounts)),
                    currency="EUR",
                    method="bank_transfer",
                    status="pending",
                )
                session.add(payment)
                target[payment.id] = payment
        session.flush()
        for payment in requested.values():
            params = {"amount": f"{payment.amount:.2f}"}
            chain = runtime.policy.chain_for(WITHDRAWAL, params)
            request_id = uuid.uuid4()
            requests_repo.insert_request(
                session,
                request_id=request_id,
                workflow_id=f"approval-{request_id}",
                action=WITHDRAWAL,
                target=payment.id,
                params=params,
                reason="property test",
                requester_id=requester.id,
                policy_version=chain.policy_version,
                chain=asdict(chain),
                created_at=now,
                expires_at=now + timedelta(days=3),
                region=players[payment.player_id].region,
                segment=players[payment.player_id].segment,
            )
            requests_repo.open_step(session, request_id, 0, now, now + timedelta(hours=4))
            request_ids.append(request_id)
    return World(players, requested, free, request_ids, requester, approver)


def _principal(user: User, roles: set[str], scope: DataScope) -> Principal:
    return Principal(user.id, user.username, frozenset(roles), scope)


def _all_pages(load: Callable[[str | None], Listing]) -> Iterator[Any]:
    """Every row of a workspace list, page after page (keyset cursors)."""
    cursor: str | None = None
    while True:
        listing = load(cursor)
        yield from listing.rows
        if listing.next_cursor is None:
            return
        cursor = listing.next_cursor


def _in_scope(scope: DataScope, player: Player, amount: Decimal | None = None) -> bool:
    return bool(within_scope(scope, region=player.region, segment=player.segment, amount=amount))


@settings(max_examples=40, deadline=None)
@given(scope=scopes)
def test_workspace_pages_show_only_players_and_payments_in_scope(
    sessions: SessionFactory, runtime: Runtime, world: World, scope: DataScope
) -> None:
    principal = _principal(world.approver, {"finance.manager", "operations.lead"}, scope)
    viewer = Viewer(world.approver, principal, csrf_token="", cookie="", workspaces=[])
    with sessions() as session:

        def page(load: Callable[[ListContext], Listing], values: dict[str, str]):
            return lambda cursor: load(ListContext(session, runtime, viewer, values, cursor))

        players = list(_all_pages(page(list_players, {})))
        payments = list(
            _all_pages(page(list_payments, {"status": "pending", "kind": "withdrawal"}))
        )

    assert all(_in_scope(scope, player) for player in players)
    assert all(_in_scope(scope, row.player) for row in payments)
    # Nothing in scope is missing either: the filter is the scope, not something narrower.
    shown_players = {p.id for p in players}
    assert {i for i, p in world.players.items() if _in_scope(scope, p)} <= shown_players
    shown_payments = {row.payment.id for row in payments}
    expected = {
        i
        for i, pay in {**world.requested, **world.free}.items()
        if _in_scope(scope, world.players[pay.player_id])
    }
    assert expected <= shown_payments


@settings(max_examples=40, deadline=None)
@given(scope=scopes)
def test_the_task_queue_holds_only_requests_in_scope_and_within_the_limit(
    sessions: SessionFactory, runtime: Runtime, world: World, scope: DataScope
) -> None:
    principal = _principal(world.approver, {"finance.manager"}, scope)
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
        if _in_scope(scope, world.players[payment.player_id], payment.amount)
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
    principal = _principal(world.requester, roles, scope)
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
    principal = _principal(world.approver, {"finance.manager"}, scope)
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
            user = _user(session, tuple(sorted(roles)), "prop-viewers")
        scope = runtime.policy.scope_of(Principal(user.id, user.username, roles))
        items = asyncio.run_coroutine_threadsafe(listed(user.username), loop).result()
        for item in items:
            with sessions() as session:
                player = session.get(Player, item["player_id"])
                assert player is not None
            assert _in_scope(scope, player), (sorted(roles), item)
        shown = {item["id"] for item in items}
        assert {
            i
            for i, pay in {**world.requested, **world.free}.items()
            if _in_scope(scope, world.players[pay.player_id])
        } <= shown

    await asyncio.to_thread(check)

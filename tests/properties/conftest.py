"""The fixed world of the scope properties: players in every region and segment, their
pending withdrawals (with and without an open request), and random data scopes.

Each test module builds its own world (module scope) with its own id tag.
"""

from __future__ import annotations

import itertools
import secrets
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import strategies as st
from sqlalchemy.orm import Session

from core.db import SessionFactory, transaction
from core.models import Payment, Player, User
from core.repositories import requests as requests_repo
from core.repositories import users as users_repo
from core.runtime import Runtime
from policies.engine import within_scope
from policies.snapshot import EVERY, DataScope, Principal
from tests.conftest import TEST_PASSWORD_HASH
from web.workspaces import Listing

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


def new_user(session: Session, roles: tuple[str, ...], team: str | None) -> User:
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
        requester = new_user(session, ("finance.clerk",), "prop-requesters")
        approver = new_user(session, ("finance.manager",), None)
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
            request_id = insert_withdrawal_request(
                session, runtime, payment, players[payment.player_id], requester, now
            )
            requests_repo.open_step(session, request_id, 0, now, now + timedelta(hours=4))
            request_ids.append(request_id)
    return World(players, requested, free, request_ids, requester, approver)


def insert_withdrawal_request(
    session: Session,
    runtime: Runtime,
    payment: Payment,
    player: Player,
    requester: User,
    now: datetime,
) -> uuid.UUID:
    """The read model of a pending withdrawal request (as the workflow writes it)."""
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
        region=player.region,
        segment=player.segment,
    )
    return request_id


def principal_of(user: User, roles: set[str], scope: DataScope) -> Principal:
    return Principal(user.id, user.username, frozenset(roles), scope)


def all_pages(load: Callable[[str | None], Listing], start: str | None = None) -> Iterator[Any]:
    """Every row of a workspace list from `start` on, page after page (keyset cursors)."""
    cursor = start
    while True:
        listing = load(cursor)
        yield from listing.rows
        if listing.next_cursor is None:
            return
        cursor = listing.next_cursor


def in_scope(scope: DataScope, player: Player, amount: Decimal | None = None) -> bool:
    return bool(within_scope(scope, region=player.region, segment=player.segment, amount=amount))

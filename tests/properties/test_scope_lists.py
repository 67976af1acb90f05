"""Property tests: no list, page, search or action shows or changes a row outside the
caller's data scope (regions, player segments, money limit).

Inventory of every place that lists or shows scoped rows (players, payments, requests,
tasks, audit events, or figures computed from them), with the test that covers it:

JSON API (api/routers)
- GET /api/v1/payments (status, kind, cursor): test_scope.py::test_the_payments_api_lists_only_
  the_callers_scope; a crafted cursor: test_the_api_answers_only_within_a_random_scope.
- GET /api/v1/requests?scope=all (status, action, cursor) and GET /api/v1/requests/{id}:
  test_the_api_answers_only_within_a_random_scope. `scope=mine` lists the caller's own
  requests whatever their scope (by design: they asked for them).
- GET /api/v1/tasks (mine, team, filters, cursor): test_the_api_answers_only_within_a_random_scope
  over HTTP; test_scope.py (mine) and test_the_team_queue_holds_only_requests_in_scope.
- POST /api/v1/tasks/{id}/claim, /release, and /tasks/bulk-decision refusing out-of-scope
  items: test_claiming_a_task_outside_the_scope_changes_nothing. POST /requests/{id}/decision
  (API and web) and each bulk item: test_scope.py::test_a_decision_is_refused_exactly_when_
  within_scope_refuses; POST /api/v1/requests and the web form: test_scope.py::test_submission_...
- POST /api/v1/requests/{id}/cancel: only the requester's own request (no scope question).
- GET /api/v1/audit (stream, actor, since, until, cursor):
  test_the_api_answers_only_within_a_random_scope; the query itself:
  test_the_audit_trail_shows_only_events_of_requests_in_scope. GET /api/v1/audit/export
  walks the same query (core.exports.audit_rows):
  test_the_audit_export_is_the_scoped_search_in_batches.
- No scoped rows: /api/v1/jit (grants of roles to people), /api/v1/delegations (people
  standing in for people), /api/v1/api-keys, /api/v1/roles and /admin/roles (role
  definitions), /scim (users and groups), /me (the caller's own scope), /auth/*.

Web pages (web/)
- /w/<workspace>/<section>, every section of the six workspaces:
  players (operations, crm, risk; q, status, region, segment, vip tier, cursor):
  test_player_and_payment_searches_never_widen_the_scope and test_scope.py; payments
  (finance; q, status, kind, method, cursor): the same two; segments (crm):
  test_the_segment_summary_counts_only_players_in_scope; reconciliation (finance; state, q,
  cursor, and the per-state counts): test_reconciliation_rows_and_counts_stay_in_scope;
  commissions (finance): test_commissions_count_only_referred_players_in_scope; audit
  (compliance): test_the_audit_trail_shows_only_events_of_requests_in_scope; requests
  (compliance; q, status, action, policy version, cursor):
  test_the_requests_section_and_its_search_stay_in_scope. Players, payments, requests,
  reconciliation and audit rendered for a real user:
  test_the_pages_show_only_rows_within_a_random_scope.
  No scoped rows: games, markets, liability by event (sportsbook exposure per event, no
  player), campaigns (the operator's campaigns, a segment is their audience, not whose data),
  affiliates, risk rules.
- /w/<workspace>/<section>/export.csv, the CSV download of every section: the section's own
  loader walked batch by batch (web/exports.py), so each section's test above covers its
  export's rows; players, payments, requests and reconciliation downloaded for a real user:
  test_the_pages_show_only_rows_within_a_random_scope.
- /requests/{id} (with its audit timeline), /requests/{id}/task-row, and every task row,
  claim and decision through visible_request: test_a_request_is_visible_exactly_within_scope;
  rendered: test_the_pages_show_only_rows_within_a_random_scope.
- /requests/new: the pending withdrawals it offers: test_the_request_form_offers_only_
  payouts_in_scope_and_within_the_limit. /requests (my requests): the viewer's own.
- /tasks (mine, team; filters): as GET /api/v1/tasks (the same task_service.queue_rows);
  rendered: test_the_pages_show_only_rows_within_a_random_scope.
- /events (SSE): forwards a change only when the request's player is in the viewer's scope
  (tests/web/test_live_updates.py); each page then re-reads through the checks above.
  No scoped rows: /jit, /delegations, /account/*, /admin/sessions, /admin/roles.

Regions and segments narrow what one sees; the money limit narrows what one may act on (my
queue, the payouts offered, claims and decisions), not what one sees (request lists, the team
queue, request pages).

HTTP properties need a real user whose roles have a random scope: the policy engine puts
role definitions in force with `apply_overrides` (what an approved role change does), here
platform.admin and finance.manager with the scope drawn, restored after each test.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session

from core import audit, request_service
from core.db import SessionFactory, transaction
from core.exports import audit_rows
from core.models import Affiliate, ApprovalRequest, AuditEvent, Payment, Player, Task, User
from core.repositories import payments as payments_repo
from core.repositories import platform as platform_repo
from core.repositories import requests as requests_repo
from core.repositories.requests import TaskFilters
from core.repositories.scope import PlayerScope
from core.request_service import RequestError
from core.runtime import Runtime
from core.task_service import queue_rows
from policies.engine import RateLimitDef, within_scope
from policies.snapshot import EVERY, DataScope
from tests.conftest import Tokens, csrf_of, sign_in_and_open
from tests.properties.conftest import (
    REGIONS,
    SEGMENTS,
    World,
    all_pages,
    in_scope,
    insert_withdrawal_request,
    new_user,
    principal_of,
    scopes,
)
from web.routes import Viewer
from web.workspaces import (
    ListContext,
    Listing,
    list_audit,
    list_commissions,
    list_payments,
    list_players,
    list_reconciliation,
    list_requests,
    list_segments,
)

# The states a decided withdrawal request can be in, so reconciliation has every kind.
DECIDED = ("approved", "executed", "failed", "rejected")
DEPOSIT = Decimal("100.00")


@dataclass(frozen=True)
class Ledger:
    """More of the world: a decided request on each free payment, an audit event on every
    request's stream and one on a person's, an affiliate who referred every player (each
    with a paid deposit this month), and a team of approvers."""

    world: World
    since: datetime  # before anything of this module's world happened
    decided: dict[uuid.UUID, str]  # request id -> payment id
    affiliate: str
    team_member: User
    person_stream: str

    @property
    def all_requests(self) -> list[uuid.UUID]:
        return [*self.world.requests, *self.decided]

    def player_of_payment(self, payment_id: str) -> Player:
        payments = {**self.world.requested, **self.world.free}
        return self.world.players[payments[payment_id].player_id]


@pytest.fixture(scope="module")
def ledger(sessions: SessionFactory, runtime: Runtime, world: World) -> Ledger:
    since = datetime.now(UTC) - timedelta(minutes=5)
    now = datetime.now(UTC)
    tag = secrets.token_hex(3).upper()
    decided: dict[uuid.UUID, str] = {}
    with transaction(sessions) as session:
        affiliate = Affiliate(
            id=f"AFF-P{tag}", name=f"Prop {tag}", plan="revshare", rate=10, status="active"
        )
        session.add(affiliate)
        session.flush()
        for player in world.players.values():
            session.get_one(Player, player.id).affiliate_id = affiliate.id
            session.add(
                Payment(
                    id=f"PAY-D{tag}{player.id[-8:]}",
                    player_id=player.id,
                    kind="deposit",
                    amount=DEPOSIT,
                    currency="EUR",
                    method="card",
                    status="paid",
                    paid_at=now,
                )
            )
        for index, payment in enumerate(sorted(world.free.values(), key=lambda p: p.id)):
            player = world.players[payment.player_id]
            request_id = insert_withdrawal_request(
                session, runtime, payment, player, world.requester, now
            )
            requests_repo.set_request_status(
                session, request_id, status=DECIDED[index % len(DECIDED)], at=now
            )
            decided[request_id] = payment.id
        for request_id in [*world.requests, *decided]:
            audit.append(
                session,
                audit.NewAuditEvent(
                    event_id=uuid.uuid4(),
                    stream=f"request:{request_id}",
                    action="request.submitted",
                    target=str(request_id),
                    actor=world.requester.username,
                ),
            )
        person_stream = f"user:{world.requester.username}"
        audit.append(
            session,
            audit.NewAuditEvent(
                event_id=uuid.uuid4(),
                stream=person_stream,
                action="user.signed_in",
                target=world.requester.username,
                actor=world.requester.username,
            ),
        )
        team_member = new_user(session, ("finance.manager",), f"prop-approvers-{tag}")
    return Ledger(world, since, decided, affiliate.id, team_member, person_stream)


def _viewer(user: User, roles: set[str], scope: DataScope) -> Viewer:
    return Viewer(user, principal_of(user, roles, scope), csrf_token="", cookie="", workspaces=[])


def _rows(
    session: Session,
    runtime: Runtime,
    viewer: Viewer,
    load: Callable[[ListContext], Listing],
    values: dict[str, str],
    cursor: str | None = None,
) -> list[Any]:
    """Every row of a section from `cursor` on (None: from the first page)."""

    def page(after: str | None) -> Listing:
        return load(ListContext(session, runtime, viewer, values, after))

    return list(all_pages(page, cursor))


def _request_in_scope(scope: DataScope, request: ApprovalRequest, with_amount: bool) -> bool:
    amount = request.amount if with_amount else None
    return bool(within_scope(scope, region=request.region, segment=request.segment, amount=amount))


# --- lists and searches, for random scopes (the list functions the pages call) ----------


@settings(max_examples=40, deadline=None)
@given(scope=scopes, data=st.data())
def test_the_requests_section_and_its_search_stay_in_scope(
    sessions: SessionFactory, runtime: Runtime, ledger: Ledger, scope: DataScope, data: Any
) -> None:
    world = ledger.world
    with sessions() as session:
        requests = {r: session.get_one(ApprovalRequest, r) for r in ledger.all_requests}
        searched = data.draw(st.sampled_from(sorted(requests, key=str)), label="searched")
        query = data.draw(
            st.sampled_from(["", requests[searched].target, str(searched)]), label="q"
        )
        status = data.draw(st.sampled_from(["", "pending", *DECIDED]), label="status")
        values = {"q": query, "status": status, "action": "payment.withdrawal"}
        viewer = _viewer(world.approver, {"compliance.officer"}, scope)
        rows = [request for request, _ in _rows(session, runtime, viewer, list_requests, values)]

        assert all(_request_in_scope(scope, r, with_amount=False) for r in rows)
        expected = {
            r.id
            for r in requests.values()
            if _request_in_scope(scope, r, with_amount=False)
            and (not status or r.status == status)
            and (not query or r.id == searched)
        }
        shown = {r.id for r in rows}
        assert expected <= shown
        if query:  # a search names one request: it, if in scope, and nothing else of ours
            assert shown & set(requests) == expected


@settings(max_examples=30, deadline=None)
@given(
    scope=scopes,
    state=st.sampled_from(platform_repo.RECONCILIATION_STATES),
    search=st.booleans(),
)
def test_reconciliation_rows_and_counts_stay_in_scope(
    sessions: SessionFactory,
    runtime: Runtime,
    ledger: Ledger,
    scope: DataScope,
    state: str,
    search: bool,
) -> None:
    viewer = _viewer(ledger.world.approver, {"finance.manager"}, scope)
    payment_id = sorted(ledger.decided.values())[0]
    values = {"state": state, "q": payment_id if search else ""}
    with sessions() as session:
        rows = _rows(session, runtime, viewer, list_reconciliation, values)
        counts = list_reconciliation(ListContext(session, runtime, viewer, values, None)).extra[
            "counts"
        ]

    assert all(_request_in_scope(scope, row.request, with_amount=False) for row in rows)
    if search:
        player = ledger.player_of_payment(payment_id)
        assert {row.request.target for row in rows} <= (
            {payment_id} if in_scope(scope, player) else set()
        )
    else:
        # The counts are of the same scoped rows: a count taken over everyone would differ.
        assert counts.get(state, 0) == len(rows)


@settings(max_examples=40, deadline=None)
@given(scope=scopes, data=st.data())
def test_the_audit_trail_shows_only_events_of_requests_in_scope(
    sessions: SessionFactory, runtime: Runtime, ledger: Ledger, scope: DataScope, data: Any
) -> None:
    request_id = data.draw(st.sampled_from(ledger.all_requests), label="stream request")
    stream = data.draw(
        st.sampled_from(["", f"request:{request_id}", ledger.person_stream]), label="stream"
    )
    values = {"stream": stream, "since": ledger.since.strftime("%Y-%m-%dT%H:%M")}
    viewer = _viewer(ledger.world.approver, {"compliance.officer"}, scope)
    with sessions() as session:
        events: list[AuditEvent] = _rows(session, runtime, viewer, list_audit, values)
        requests = {
            r.id: r
            for r in session.scalars(
                select(ApprovalRequest).where(
                    ApprovalRequest.id.in_({e.request_id for e in events if e.request_id})
                )
            )
        }
        ours = {r: session.get_one(ApprovalRequest, r) for r in ledger.all_requests}

    narrowed = not PlayerScope.of(scope).reaches_every_player
    for event in events:
        if narrowed:  # only events of a request, and of a request in scope
            assert event.request_id is not None, event.stream
            assert _request_in_scope(scope, requests[event.request_id], with_amount=False)
    expected_requests = {
        r
        for r, request in ours.items()
        if _request_in_scope(scope, request, with_amount=False) and stream in ("", f"request:{r}")
    }
    assert expected_requests <= {e.request_id for e in events}
    shows_person = any(e.stream == ledger.person_stream for e in events)
    assert shows_person == (not narrowed and stream in ("", ledger.person_stream))


@settings(max_examples=20, deadline=None)
@given(scope=scopes, batch=st.integers(min_value=1, max_value=6), data=st.data())
def test_the_audit_export_is_the_scoped_search_in_batches(
    sessions: SessionFactory, ledger: Ledger, scope: DataScope, batch: int, data: Any
) -> None:
    """The export reads the search's query in batches: the same events, in the same order,
    whatever the batch size; narrowed, only events of requests (the search's own scope
    property is test_the_audit_trail_shows_only_events_of_requests_in_scope)."""
    stream = data.draw(st.sampled_from(["", ledger.person_stream]), label="stream")
    query = audit.AuditQuery(
        stream=stream or None, since=ledger.since, scope=PlayerScope.of(scope), limit=10_000
    )
    exported = [event.id for event in audit_rows(sessions, query, batch)]
    with sessions() as session:
        searched = [event.id for event in audit.search(session, query)]
    assert exported == searched
    assert len(set(exported)) == len(exported)
    if not PlayerScope.of(scope).reaches_every_player:
        with sessions() as session:
            streams = session.scalars(select(AuditEvent.stream).where(AuditEvent.id.in_(exported)))
            assert all(stream.startswith("request:") for stream in streams)


@settings(max_examples=30, deadline=None)
@given(scope=scopes)
def test_the_segment_summary_counts_only_players_in_scope(
    sessions: SessionFactory, runtime: Runtime, ledger: Ledger, scope: DataScope
) -> None:
    viewer = _viewer(ledger.world.approver, {"crm.manager"}, scope)
    with sessions() as session:
        summary = list_segments(ListContext(session, runtime, viewer, {}, None)).rows
        everyone = list(session.execute(select(Player.region, Player.segment, Player.status)))

    expected: dict[str, int] = {}
    for region, segment, _ in everyone:
        if within_scope(scope, region=region, segment=segment):
            expected[segment] = expected.get(segment, 0) + 1
    assert {s.segment: s.players for s in summary if s.players} == expected
    if scope.segments != EVERY:  # not even the campaigns of another segment
        assert {s.segment for s in summary} <= scope.segments


@settings(max_examples=30, deadline=None)
@given(scope=scopes)
def test_commissions_count_only_referred_players_in_scope(
    sessions: SessionFactory, runtime: Runtime, ledger: Ledger, scope: DataScope
) -> None:
    viewer = _viewer(ledger.world.approver, {"finance.manager"}, scope)
    values = {"q": ledger.affiliate, "month": datetime.now(UTC).strftime("%Y-%m")}
    with sessions() as session:
        rows = _rows(session, runtime, viewer, list_commissions, values)

    reached = sum(1 for p in ledger.world.players.values() if in_scope(scope, p))
    [commission] = [c for c in rows if c.affiliate.id == ledger.affiliate]
    assert commission.referred_players == reached
    assert commission.deposits == DEPOSIT * reached
    assert commission.first_depositors == reached


@settings(max_examples=50, deadline=None)
@given(scope=scopes, data=st.data())
def test_player_and_payment_searches_never_widen_the_scope(
    sessions: SessionFactory, runtime: Runtime, ledger: Ledger, scope: DataScope, data: Any
) -> None:
    world = ledger.world
    players = sorted(world.players)
    searched = data.draw(st.sampled_from(players), label="searched player")
    region = data.draw(st.sampled_from(["", *REGIONS]), label="region")
    segment = data.draw(st.sampled_from(["", *SEGMENTS]), label="segment")
    # A cursor is only a position: one pointing at (or just before) a player outside the
    # scope must not bring that player or any other outside it.
    cursor = data.draw(
        st.one_of(st.none(), st.sampled_from(players).map(lambda p: p[:-1])), label="cursor"
    )
    viewer = _viewer(world.approver, {"finance.manager"}, scope)
    player_filters = {"q": searched, "region": region, "segment": segment}
    with sessions() as session:
        shown_players = _rows(session, runtime, viewer, list_players, player_filters, cursor)
        shown_payments = _rows(
            session, runtime, viewer, list_payments, {"q": searched, "status": ""}, cursor
        )
        by_username = _rows(
            session, runtime, viewer, list_players, {"q": world.players[searched].username}
        )

    target = world.players[searched]
    reachable = in_scope(scope, target)
    assert all(in_scope(scope, p) for p in [*shown_players, *by_username])
    assert all(in_scope(scope, row.player) for row in shown_payments)
    assert {p.id for p in by_username} == ({searched} if reachable else set())
    matches = (
        reachable
        and region in ("", target.region)
        and segment in ("", target.segment)
        and (cursor is None or searched > cursor)
    )
    assert {p.id for p in shown_players} == ({searched} if matches else set())
    expected_payments = {
        payment_id
        for payment_id, payment in {**world.requested, **world.free}.items()
        if payment.player_id == searched and reachable and (cursor is None or payment_id > cursor)
    }
    assert expected_payments <= {row.payment.id for row in shown_payments}


@settings(max_examples=30, deadline=None)
@given(scope=scopes)
def test_the_request_form_offers_only_payouts_in_scope_and_within_the_limit(
    sessions: SessionFactory, ledger: Ledger, scope: DataScope
) -> None:
    """The pending withdrawals /requests/new lists (the same query the page runs)."""
    world = ledger.world
    with sessions() as session:
        rows = payments_repo.page(
            session,
            status="pending",
            kind="withdrawal",
            scope=PlayerScope.of(scope),
            within_limit=True,
            limit=10_000,
        )
    for row in rows:
        assert in_scope(scope, row.player, row.payment.amount), row.payment.id
    expected = {
        payment_id
        for payment_id, payment in world.free.items()
        if in_scope(scope, world.players[payment.player_id], payment.amount)
    }
    assert expected <= {row.payment.id for row in rows}


@settings(max_examples=40, deadline=None)
@given(scope=scopes)
def test_the_team_queue_holds_only_requests_in_scope(
    sessions: SessionFactory, runtime: Runtime, ledger: Ledger, scope: DataScope
) -> None:
    member = ledger.team_member
    principal = principal_of(member, {"finance.manager"}, scope)
    with sessions() as session:
        rows = queue_rows(runtime, session, member, principal, "team", TaskFilters(), limit=10_000)
    # What a teammate could decide: the viewer's own money limit does not narrow it (each
    # row says whether the viewer may decide it), the regions and segments do.
    for row in rows:
        assert _request_in_scope(scope, row.request, with_amount=False), row.request.target
    expected = {
        payment_id
        for payment_id, payment in ledger.world.requested.items()
        if in_scope(scope, ledger.world.players[payment.player_id])
    }
    assert expected <= {row.request.target for row in rows}


@settings(max_examples=60, deadline=None)
@given(scope=scopes, data=st.data())
def test_a_request_is_visible_exactly_within_scope(
    sessions: SessionFactory, runtime: Runtime, ledger: Ledger, scope: DataScope, data: Any
) -> None:
    """visible_request guards the request page, its task row, the API read, claims and
    decisions; even a holder of requests:view_all sees nothing outside their scope."""
    request_id = data.draw(st.sampled_from(ledger.all_requests))
    roles = data.draw(st.sampled_from([{"compliance.officer"}, {"finance.manager"}]))
    principal = principal_of(ledger.world.approver, roles, scope)
    with sessions() as session:
        request = session.get_one(ApprovalRequest, request_id)
        expected = _request_in_scope(scope, request, with_amount=False)
        try:
            shown = request_service.visible_request(session, runtime, principal, request_id)
        except RequestError as refused:
            assert (refused.status, refused.detail) == (404, "request not found")
            # Outside the scope, or (without view_all) a request that is not theirs to see.
            assert not expected or roles == {"finance.manager"}
        else:
            assert expected and shown.id == request_id


# --- over HTTP, as a real user whose roles have a random scope ---------------------------

HTTP_ROLES = ("platform.admin", "finance.manager")
UNLIMITED = RateLimitDef(per_hour=1_000_000, burst=100_000)


@contextmanager
def roles_with_scope(runtime: Runtime, scope: DataScope) -> Iterator[None]:
    """HTTP_ROLES put in force with this scope (as an approved role change would), over
    the roles in force now, which come back afterwards."""
    policy = runtime.policy
    version = policy.overrides_version
    in_force = dict(policy.roles.roles)
    overrides = {}
    for name in HTTP_ROLES:
        role = in_force[name]
        new_scope = role.scope.model_copy(
            update={
                "regions": EVERY if scope.regions == EVERY else sorted(scope.regions),
                "segments": EVERY if scope.segments == EVERY else sorted(scope.segments),
                "max_amount": scope.max_amount,
            }
        )
        # Enough API calls for every example (and hypothesis's shrinking) within the hour.
        overrides[name] = role.model_copy(update={"scope": new_scope, "rate_limit": UNLIMITED})
    policy.apply_overrides(version, {**in_force, **overrides})
    try:
        yield
    finally:
        policy.apply_overrides(version, in_force)


# Roles may not have an empty dimension or a zero limit; the engine refuses them.
role_scopes = st.builds(
    DataScope,
    regions=st.one_of(st.just(EVERY), st.frozensets(st.sampled_from(REGIONS), min_size=1)),
    segments=st.one_of(st.just(EVERY), st.frozensets(st.sampled_from(SEGMENTS), min_size=1)),
    max_amount=st.one_of(
        st.none(), st.sampled_from([Decimal("5000.00"), Decimal("9999.99"), Decimal("25000.00")])
    ),
)


def _run(loop: asyncio.AbstractEventLoop, coroutine: Any) -> Any:
    return asyncio.run_coroutine_threadsafe(coroutine, loop).result()


async def _pages(client: httpx.AsyncClient, path: str, query: dict[str, str], headers: Any):
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        response = await client.get(
            path, params={**query, **({"cursor": cursor} if cursor else {})}, headers=headers
        )
        assert response.status_code == 200, response.text
        items += response.json()["items"]
        if (cursor := response.json()["next"]) is None:
            return items


@pytest.fixture(scope="module")
def http_user(sessions: SessionFactory) -> User:
    with transaction(sessions) as session:
        return new_user(session, HTTP_ROLES, None)


async def test_the_api_answers_only_within_a_random_scope(
    api: httpx.AsyncClient,
    tokens: Tokens,
    sessions: SessionFactory,
    runtime: Runtime,
    ledger: Ledger,
    http_user: User,
) -> None:
    loop = asyncio.get_running_loop()
    headers = await tokens.headers(http_user.username)
    since = ledger.since.isoformat()
    with sessions() as session:
        requests = {r: session.get_one(ApprovalRequest, r) for r in ledger.all_requests}

    @settings(max_examples=12, deadline=None)
    @given(scope=role_scopes, data=st.data())
    def check(scope: DataScope, data: Any) -> None:
        probe = data.draw(st.sampled_from(sorted(requests, key=str)), label="probe")
        payment_cursor = data.draw(st.sampled_from(sorted(ledger.world.free)))[:-1]
        with roles_with_scope(runtime, scope):
            listed = _run(
                loop,
                _pages(
                    api,
                    "/api/v1/requests",
                    {"scope": "all", "limit": "200", "action": "payment.withdrawal"},
                    headers,
                ),
            )
            one = _run(loop, api.get(f"/api/v1/requests/{probe}", headers=headers))
            events = _run(
                loop, _pages(api, "/api/v1/audit", {"since": since, "limit": "500"}, headers)
            )
            tasks = _run(loop, _pages(api, "/api/v1/tasks", {"limit": "200"}, headers))
            payments = _run(
                loop,
                api.get(
                    "/api/v1/payments",
                    params={"cursor": payment_cursor, "limit": "200"},
                    headers=headers,
                ),
            )

        with sessions() as session:
            for item in listed:
                request = session.get_one(ApprovalRequest, uuid.UUID(item["id"]))
                assert _request_in_scope(scope, request, with_amount=False), item
            for event in events:
                stream_request = re.fullmatch(r"request:(.+)", event["stream"])
                if scope.regions == EVERY and scope.segments == EVERY:
                    continue
                assert stream_request, event["stream"]
                request = session.get_one(ApprovalRequest, uuid.UUID(stream_request.group(1)))
                assert _request_in_scope(scope, request, with_amount=False), event
            for task in tasks:
                request = session.get_one(ApprovalRequest, uuid.UUID(task["request_id"]))
                assert _request_in_scope(scope, request, with_amount=True), task
            assert payments.status_code == 200, payments.text
            for item in payments.json()["items"]:
                assert item["id"] > payment_cursor
                assert in_scope(scope, session.get_one(Player, item["player_id"])), item

        expected = {r for r, req in requests.items() if _request_in_scope(scope, req, False)}
        assert expected <= {uuid.UUID(i["id"]) for i in listed}
        assert one.status_code == (200 if probe in expected else 404), one.text

    await asyncio.to_thread(check)


async def test_claiming_a_task_outside_the_scope_changes_nothing(
    api: httpx.AsyncClient,
    tokens: Tokens,
    sessions: SessionFactory,
    runtime: Runtime,
    ledger: Ledger,
    http_user: User,
) -> None:
    loop = asyncio.get_running_loop()
    headers = await tokens.headers(http_user.username)
    with sessions() as session:
        tasks = {
            task.id: session.get_one(ApprovalRequest, task.request_id)
            for task in session.scalars(
                select(Task).where(
                    Task.request_id.in_(ledger.world.requests), Task.status == requests_repo.OPEN
                )
            )
        }

    def events_of(request_id: uuid.UUID) -> int:
        with sessions() as session:
            return len(audit.stream_events(session, f"request:{request_id}"))

    @settings(max_examples=12, deadline=None)
    @given(scope=role_scopes, task_id=st.sampled_from(sorted(tasks)))
    def check(scope: DataScope, task_id: int) -> None:
        request = tasks[task_id]
        before = events_of(request.id)
        allowed = _request_in_scope(scope, request, with_amount=True)
        with roles_with_scope(runtime, scope):
            claimed = _run(loop, api.post(f"/api/v1/tasks/{task_id}/claim", headers=headers))
            if claimed.status_code == 200:
                released = _run(loop, api.post(f"/api/v1/tasks/{task_id}/release", headers=headers))
                assert released.status_code == 200, released.text
            # (A bulk approval within the scope would really decide: only refusals here.)
            bulk = None
            if not allowed:
                body = {"task_ids": [task_id], "decision": "approve", "comment": "property"}
                bulk = _run(
                    loop, api.post("/api/v1/tasks/bulk-decision", json=body, headers=headers)
                )
        if allowed:
            assert claimed.status_code == 200, claimed.text
            return
        if not _request_in_scope(scope, request, with_amount=False):
            assert claimed.status_code == 404, claimed.text  # as if it did not exist
        else:
            assert claimed.status_code == 403, claimed.text
        assert bulk is not None
        assert bulk.status_code == 422, bulk.text
        assert bulk.json()["items"][0]["task_id"] == task_id
        assert events_of(request.id) == before
        with sessions() as session:
            assert session.get_one(Task, task_id).claimed_by_id is None
            assert session.get_one(ApprovalRequest, request.id).status == "pending"

    await asyncio.to_thread(check)


async def test_the_pages_show_only_rows_within_a_random_scope(
    web: httpx.AsyncClient, sessions: SessionFactory, runtime: Runtime, ledger: Ledger
) -> None:
    """The rendered pages: an id outside the scope never appears in the HTML, and an id
    searched for appears exactly when it is in scope."""
    loop = asyncio.get_running_loop()
    with transaction(sessions) as session:
        user = new_user(session, HTTP_ROLES, None)
    first = await sign_in_and_open(web, user.username, "/tasks")
    assert first.status_code == 200, first.text
    csrf_of(first)  # signed in, with a form to act from
    world = ledger.world
    payments = {**world.requested, **world.free}
    with sessions() as session:
        requests = {r: session.get_one(ApprovalRequest, r) for r in ledger.all_requests}

    @settings(max_examples=8, deadline=None)
    @given(scope=role_scopes, data=st.data())
    def check(scope: DataScope, data: Any) -> None:
        player_id = data.draw(st.sampled_from(sorted(world.players)), label="player")
        player = world.players[player_id]
        request_id = data.draw(st.sampled_from(sorted(requests, key=str)), label="request")
        request = requests[request_id]
        # page -> (path, what its search box repeats back, not counted as showing it)
        pages = {
            "players": (f"/w/crm/players?q={player.username}", player.username),
            "payments": (f"/w/finance/payments?q={player.username}&status=&kind=", player.username),
            "requests": (f"/w/compliance/requests?q={request.target}", request.target),
            "reconciliation": ("/w/finance/reconciliation?state=", ""),
            "audit": (f"/w/compliance/audit?actor={world.requester.username}", ""),
            "request": (f"/requests/{request_id}", ""),
            "tasks": ("/tasks", ""),
            # Downloads: every page at once, through the same loaders.
            "players.csv": (f"/w/crm/players/export.csv?q={player.username}", ""),
            "payments.csv": (
                f"/w/finance/payments/export.csv?q={player.username}&status=&kind=",
                "",
            ),
            "requests.csv": ("/w/compliance/requests/export.csv", ""),
            "reconciliation.csv": ("/w/finance/reconciliation/export.csv?state=", ""),
        }
        with roles_with_scope(runtime, scope):
            responses = {name: _run(loop, web.get(path)) for name, (path, _) in pages.items()}
        shown = {
            name: (
                response.status_code,
                response.text.replace(pages[name][1], "") if pages[name][1] else response.text,
            )
            for name, response in responses.items()
        }

        outside = {
            str(r) for r, req in requests.items() if not _request_in_scope(scope, req, False)
        }
        outside |= {p for p, pl in world.players.items() if not in_scope(scope, pl)}
        outside |= {
            p for p, pay in payments.items() if not in_scope(scope, world.players[pay.player_id])
        }
        for name, (status, text) in shown.items():
            assert status in (200, 404), (name, text)
            leaked = [i for i in outside if i in text]
            assert not leaked, (name, leaked[:3])
        reachable = in_scope(scope, player)
        assert (player_id in shown["players"][1]) == reachable
        of_player = {p for p, pay in payments.items() if pay.player_id == player_id}
        assert all((p in shown["payments"][1]) == reachable for p in of_player)
        assert (player_id in shown["players.csv"][1]) == reachable
        assert all((p in shown["payments.csv"][1]) == reachable for p in of_player)
        visible = _request_in_scope(scope, request, False)
        assert shown["request"][0] == (200 if visible else 404)
        assert (str(request_id) in shown["requests"][1]) == visible
        assert (str(request_id) in shown["requests.csv"][1]) == visible

    await asyncio.to_thread(check)

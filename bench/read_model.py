"""The read model at scale: the task queue, the request list and audit search, at two sizes.

What is measured
----------------
A request history is written straight into PostgreSQL with COPY, deterministically (seed 7):
requests drawn from the same catalogue mix as bench/chains.py, one every 30 seconds from
2025-01-01, each with its chain snapshot (from the policy engine), its tasks, decisions and
the audit events the app would record (submitted, step opened, each decision, step approved,
approved, executed; or a rejection), plus an `auth.login` event in the deciding user's stream
before each of their actions (~9 events a request). 4% are rejected; of the requests of the
last two days a fifth are still pending (their open steps are the task queues), the rest
are executed. Before the history grows to the next size, what was pending expires (with its
`request.expired` event), so the backlog stays the size people leave, whatever the history
behind it. Every stream is hash-chained with `core.audit.event_hash` and has its
`audit_stream_heads` row, so `backoffice audit verify` passes (`audit.verify` checks it at
every size under 2M events). Rows go in chunk by chunk with the schema's indexes in place.

At the small size S1 (default 10,000 requests, ~100k events) and then, after adding the rest,
at the large size S2 (default 1,000,000 requests, ~10M events), each query below runs as the
app runs it (`core.repositories.requests`, `core.audit.search`), 30 times after a warm-up,
with its arguments rotating (approvers, streams, actors, one-day windows):

- `task_queue_first`, `task_queue_deep`: an approver's queue, first page and a keyset page
  about 80% down it (fin.manager, ops.lead, trading.lead, crm.lead, comp.officer);
- `requests_all_first`, `requests_mine_first`, `requests_pending_first`, `requests_all_deep`:
  the request list for everyone, for one requester, filtered to pending, and a keyset page
  80% down the full list;
- `audit_stream`, `audit_actor_first`, `audit_actor_deep`, `audit_window_first`,
  `audit_window_deep`, `audit_all_first`: audit search by request stream, by actor (first
  page, and a page before the event 20% into the table), by a one-day time range (first
  page, and a page before the middle of the day), and unfiltered.

Printed per size (labels like `10k`, `1m`): `<query>_p50_<size>`, `<query>_p95_<size>` in ms,
`history_insert_rate_<size>` (events/s), `database_size_<size>` (MB); then
`ratio <query>_<S2>_vs_<S1>` of the p95s (close to 1: the indexes scale), and `peak_rss`.
A query whose p95 grew more than 3x gets its EXPLAIN (ANALYZE, BUFFERS) on stderr.

A throwaway database is created on the `DATABASE_URL` server (else an embedded PostgreSQL
in a temp dir is used), and dropped at the end.

    python -m bench.read_model [--small 10000] [--large 1000000] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import psycopg
from psycopg.types.json import Jsonb
from sqlalchemy import event, text
from sqlalchemy.orm import Session

from bench._common import (
    database_size_mb,
    figure,
    logger,
    peak_rss_mb,
    percentile,
    plain_url,
    ratio,
    start_services,
)
from bench.chains import MIX, Kind
from core import audit
from core.db import make_engine, make_session_factory, transaction
from core.migrate import upgrade
from core.models import AuditEvent
from core.repositories import requests as requests_repo
from core.seed import seed_users
from policies.engine import PolicyEngine

log = logger("read_model")
HISTORY_START = datetime(2025, 1, 1, tzinfo=UTC)
ARRIVAL = timedelta(seconds=30)
CHUNK = 5_000  # requests per COPY transaction
# Still pending: a share of the requests of the last two days (not yet expired); the backlog
# is what people have not cleared yet, so it does not grow with the history behind it.
BACKLOG_WINDOW = timedelta(days=2)
PENDING_SHARE, REJECTED_SHARE = 0.2, 0.04
TARGET_POOLS = {  # ids drawn for each kind of target (withdrawals get a payment each)
    "player": ("PLR", 1_000_000),
    "game": ("GAME", 200),
    "market": ("MKT", 500),
    "campaign": ("BON", 20),
    "affiliate": ("AFF", 50),
    "risk_rule": ("RR", 5),
}
APPROVERS = ("fin.manager", "ops.lead", "trading.lead", "crm.lead", "comp.officer")
RUNS, WARMUP = 30, 3
DAY = timedelta(days=1)
NOT_SCALING = 3  # a p95 this many times the small size's gets its plan explained

REQUEST_COLUMNS = (
    "id, workflow_id, action, target, params, amount, reason, requester_id, status, "
    "policy_version, chain, current_step, created_at, updated_at, expires_at, completed_at, "
    "outcome"
)
TASK_COLUMNS = (
    "request_id, step_index, name, roles, required_approvals, approvals, status, sla_seconds, "
    "opened_at, due_at, closed_at"
)
DECISION_COLUMNS = "request_id, step_index, user_id, decision, comment, channel, decided_at"
EVENT_COLUMNS = (
    "event_id, stream, seq, occurred_at, actor, actor_type, channel, ip, device, action, "
    "target, before, after, sensitivity, prev_hash, hash"
)


@dataclass
class Event:
    """An audit row as `audit.event_hash` reads it (duck-typed, without the ORM's cost)."""

    event_id: uuid.UUID
    stream: str
    seq: int
    occurred_at: datetime
    actor: str
    actor_type: str
    channel: str
    action: str
    target: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    sensitivity: str
    prev_hash: str
    ip: str | None = None
    device: str | None = None
    hash: str = ""

    def row(self) -> tuple[Any, ...]:
        return (
            self.event_id,
            self.stream,
            self.seq,
            self.occurred_at,
            self.actor,
            self.actor_type,
            self.channel,
            self.ip,
            self.device,
            self.action,
            self.target,
            Jsonb(self.before) if self.before is not None else None,
            Jsonb(self.after) if self.after is not None else None,
            self.sensitivity,
            self.prev_hash,
            self.hash,
        )


@dataclass
class Chunk:
    requests: list[tuple[Any, ...]] = field(default_factory=list)
    tasks: list[tuple[Any, ...]] = field(default_factory=list)
    decisions: list[tuple[Any, ...]] = field(default_factory=list)
    events: list[tuple[Any, ...]] = field(default_factory=list)
    heads: list[tuple[Any, ...]] = field(default_factory=list)


@dataclass(frozen=True)
class Person:
    id: int
    username: str
    ip: str


SYSTEM = Person(0, "system", "")


def _task_row(
    request_id: uuid.UUID,
    index: int,
    step: dict[str, Any],
    status: str,
    *,
    approvals: int = 0,
    opened: datetime | None = None,
    due: datetime | None = None,
    closed: datetime | None = None,
) -> tuple[Any, ...]:
    return (
        request_id,
        index,
        step["name"],
        step["roles"],
        step["approvals"],
        approvals,
        status,
        step["sla_seconds"],
        opened,
        due,
        closed,
    )


@dataclass
class Stream:
    """One hash chain being extended: its name and its head."""

    name: str
    seq: int = 0
    last_hash: str = audit.GENESIS_HASH


class History:
    """Generates request histories in order; keeps only the user streams' heads in memory."""

    def __init__(self, people: dict[str, Person], chains: dict[str, dict[str, Any]]) -> None:
        self.rng = random.Random(7)
        self.people = people
        self.chains = chains
        self.weights = [kind.weight for kind in MIX]
        self.user_streams = {name: Stream(f"user:{name}") for name in people}
        self.open_targets: set[tuple[str, str]] = set()
        self.written = 0

    def uuid(self) -> uuid.UUID:
        return uuid.UUID(int=self.rng.getrandbits(128), version=4)

    def emit(
        self,
        chunk: Chunk,
        stream: Stream,
        at: datetime,
        by: Person,
        action: str,
        target: str,
        after: dict[str, Any] | None,
        before: dict[str, Any] | None = None,
        sensitivity: str = "high",
    ) -> None:
        """Append one event to the stream's chain, as `audit.append` would."""
        user = by is not SYSTEM
        event = Event(
            event_id=self.uuid(),
            stream=stream.name,
            seq=stream.seq + 1,
            occurred_at=at,
            actor=by.username,
            actor_type="user" if user else "system",
            channel="web" if user else "system",
            action=action,
            target=target,
            before=before,
            after=after,
            sensitivity=sensitivity,
            prev_hash=stream.last_hash,
            ip=by.ip if user else None,
            device="bench-client" if user else None,
        )
        event.hash = audit.event_hash(cast(AuditEvent, event))
        chunk.events.append(event.row())
        stream.seq, stream.last_hash = event.seq, event.hash

    def login(self, chunk: Chunk, person: Person, at: datetime) -> None:
        stream = self.user_streams[person.username]
        self.emit(
            chunk,
            stream,
            at,
            person,
            "auth.login",
            stream.name,
            {"channel": "web"},
            sensitivity="security",
        )

    def _target(self, kind: Kind, number: int) -> str:
        if kind.action == "payment.withdrawal":
            return f"PAY-H{number:08d}"
        prefix, size = TARGET_POOLS[kind.pool]
        return f"{prefix}-{self.rng.randint(1, size):07d}"

    def _outcome(self, action: str, target: str, may_be_pending: bool) -> str:
        roll = self.rng.random()
        if may_be_pending and roll < PENDING_SHARE and (action, target) not in self.open_targets:
            self.open_targets.add((action, target))  # one open request per target, as in the app
            return "pending"
        return "rejected" if PENDING_SHARE <= roll < PENDING_SHARE + REJECTED_SHARE else "executed"

    def request(self, chunk: Chunk, number: int, upto: int) -> None:
        """Request `number` of a history that ends (for now) before request `upto`."""
        rng = self.rng
        kind = rng.choices(MIX, self.weights)[0]
        chain = self.chains[kind.name]
        target = self._target(kind, number)
        age = (upto - number) * ARRIVAL
        young = age < min(BACKLOG_WINDOW, timedelta(seconds=chain["expires_after_seconds"]))
        outcome = self._outcome(kind.action, target, young)
        request_id = self.uuid()
        stream = Stream(f"request:{request_id}")
        requester = self.people[kind.requester]
        created = HISTORY_START + number * ARRIVAL + timedelta(seconds=rng.randint(0, 29))
        expires = created + timedelta(seconds=chain["expires_after_seconds"])
        amount = None
        if kind.action == "payment.withdrawal":
            units = rng.randint(10_000, 60_000) if kind.tier == "large" else rng.randint(50, 9_900)
            amount = f"{units}.00"
        params = {"amount": amount} if amount else {}
        steps = chain["steps"]
        at = created
        self.login(chunk, requester, at)
        self.emit(
            chunk,
            stream,
            at,
            requester,
            "request.submitted",
            target,
            {
                "action": kind.action,
                "target": target,
                "params": params,
                "reason": "history",
                "status": "pending",
                "policy_version": chain["policy_version"],
                "tier": chain["tier"],
                "steps": [step["name"] for step in steps],
                "expires_at": expires.isoformat(),
            },
        )
        approvers = iter(kind.approvers)
        current = 0
        for index, step in enumerate(steps):
            current = index
            at += timedelta(seconds=rng.randint(1, 5))
            opened, due = at, at + timedelta(seconds=step["sla_seconds"])
            self.emit(
                chunk,
                stream,
                at,
                SYSTEM,
                "request.step_opened",
                stream.name,
                {"due_at": due.isoformat(), "step": index},
                sensitivity="normal",
            )
            if outcome == "pending":
                chunk.tasks.append(
                    _task_row(request_id, index, step, "open", opened=opened, due=due)
                )
                chunk.tasks.extend(
                    _task_row(request_id, later, steps[later], "waiting")
                    for later in range(index + 1, len(steps))
                )
                break
            decision = "reject" if outcome == "rejected" else "approve"
            for _ in range(1 if decision == "reject" else step["approvals"]):
                person = self.people[next(approvers)]
                at += timedelta(seconds=rng.randint(60, 4 * 3600))
                self.login(chunk, person, at)
                comment = f"{decision} after review"
                self.emit(
                    chunk,
                    stream,
                    at,
                    person,
                    "request.decision",
                    stream.name,
                    {"decision": decision, "comment": comment, "step": index},
                )
                chunk.decisions.append((request_id, index, person.id, decision, comment, "web", at))
            if decision == "reject":
                chunk.tasks.append(
                    _task_row(
                        request_id, index, step, "rejected", opened=opened, due=due, closed=at
                    )
                )
                chunk.tasks.extend(
                    _task_row(request_id, later, steps[later], "cancelled", closed=at)
                    for later in range(index + 1, len(steps))
                )
                break
            chunk.tasks.append(
                _task_row(
                    request_id,
                    index,
                    step,
                    "approved",
                    approvals=step["approvals"],
                    opened=opened,
                    due=due,
                    closed=at,
                )
            )
            self.emit(
                chunk,
                stream,
                at,
                SYSTEM,
                "request.step_approved",
                stream.name,
                {"step": index},
                sensitivity="normal",
            )
        completed, result = None, None
        if outcome != "pending":
            self.emit(
                chunk,
                stream,
                at,
                SYSTEM,
                f"request.{'rejected' if outcome == 'rejected' else 'approved'}",
                stream.name,
                {"status": outcome if outcome == "rejected" else "approved"},
                {"status": "pending"},
            )
            completed = at
        if outcome == "executed":
            at += timedelta(seconds=rng.randint(1, 10))
            result = f"Changed {target}"
            self.emit(
                chunk,
                stream,
                at,
                SYSTEM,
                "request.executed",
                target,
                {"id": target, "changed": True},
                {"id": target},
            )
            completed = at
        chunk.requests.append(
            (
                request_id,
                f"approval-{request_id}",
                kind.action,
                target,
                Jsonb(params),
                amount,
                "history",
                requester.id,
                outcome,
                chain["policy_version"],
                Jsonb(chain),
                current,
                created,
                at,
                expires,
                completed,
                result,
            )
        )
        chunk.heads.append((stream.name, stream.seq, stream.last_hash))
        self.written += 1

    def expire_backlog(self, conn: psycopg.Connection[Any]) -> int:
        """Before the history goes on, what was left pending expires, as the workflow does."""
        pending = conn.execute(
            "SELECT r.id, r.expires_at, h.last_seq, h.last_hash FROM requests r"
            " JOIN audit_stream_heads h ON h.stream = 'request:' || r.id"
            " WHERE r.status = 'pending'"
        ).fetchall()
        chunk = Chunk()
        for request_id, expires_at, seq, last_hash in pending:
            stream = Stream(f"request:{request_id}", seq, last_hash)
            self.emit(
                chunk,
                stream,
                expires_at,
                SYSTEM,
                "request.expired",
                stream.name,
                {"status": "expired"},
                {"status": "pending"},
                sensitivity="normal",
            )
            chunk.heads.append((stream.seq, stream.last_hash, stream.name))
        _copy(conn, "audit_events", EVENT_COLUMNS, chunk.events)
        with conn.cursor() as cursor:
            cursor.executemany(
                "UPDATE audit_stream_heads SET last_seq = %s, last_hash = %s WHERE stream = %s",
                chunk.heads,
            )
        conn.execute(
            "UPDATE tasks SET closed_at = r.expires_at,"
            " status = CASE tasks.status WHEN 'open' THEN 'expired' ELSE 'cancelled' END"
            " FROM requests r WHERE r.id = tasks.request_id AND r.status = 'pending'"
            " AND tasks.status IN ('open', 'waiting')"
        )
        conn.execute(
            "UPDATE requests SET status = 'expired', completed_at = expires_at,"
            " updated_at = expires_at WHERE status = 'pending'"
        )
        self.open_targets.clear()
        return len(pending)


def _copy(conn: psycopg.Connection[Any], table: str, columns: str, rows: Sequence[Any]) -> None:
    with conn.cursor() as cursor, cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def write_history(url: str, history: History, upto: int) -> tuple[int, float]:
    """Append requests until `upto` exist; returns (events written, seconds)."""
    started = time.perf_counter()
    events = 0
    first = history.written
    with psycopg.connect(plain_url(url)) as conn:
        conn.execute("SET synchronous_commit = off")
        if history.written:
            log(f"  {history.expire_backlog(conn):,} requests left pending expired")
            conn.commit()
        while history.written < upto:
            chunk = Chunk()
            for number in range(history.written, min(history.written + CHUNK, upto)):
                history.request(chunk, number, upto)
            _copy(conn, "requests", REQUEST_COLUMNS, chunk.requests)
            _copy(conn, "tasks", TASK_COLUMNS, chunk.tasks)
            _copy(conn, "decisions", DECISION_COLUMNS, chunk.decisions)
            _copy(conn, "audit_events", EVENT_COLUMNS, chunk.events)
            _copy(conn, "audit_stream_heads", "stream, last_seq, last_hash", chunk.heads)
            conn.commit()
            events += len(chunk.events)
            done = history.written - first
            elapsed = time.perf_counter() - started
            if done % (CHUNK * 10) == 0 or history.written == upto:
                log(
                    f"  history: {history.written:,}/{upto:,} requests, {events:,} events, "
                    f"{events / elapsed:,.0f} events/s"
                )
        with conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO audit_stream_heads (stream, last_seq, last_hash) VALUES (%s, %s, %s)"
                " ON CONFLICT (stream) DO UPDATE"
                " SET last_seq = EXCLUDED.last_seq, last_hash = EXCLUDED.last_hash",
                [(s.name, s.seq, s.last_hash) for s in history.user_streams.values() if s.seq],
            )
        conn.commit()
        conn.execute("ANALYZE")
    return events, time.perf_counter() - started


# --- the queries --------------------------------------------------------------------------


Query = Callable[[Session, int], Any]


def _scalar(session: Session, sql: str, **params: Any) -> Any:
    return session.execute(text(sql), params).first()


def build_queries(session: Session, people: dict[str, Person], requests: int) -> dict[str, Query]:
    """Each query takes the run number, so its arguments rotate deterministically."""
    roles = {
        name: list(
            session.execute(
                text("SELECT role FROM user_roles WHERE user_id = :id"), {"id": p.id}
            ).scalars()
        )
        for name, p in people.items()
    }
    teams: dict[str, str | None] = {
        name: team for name, team in session.execute(text("SELECT username, team FROM users"))
    }
    deep_tasks: dict[str, requests_repo.TaskCursor | None] = {}
    for name in APPROVERS:
        count = _scalar(
            session,
            "SELECT count(*) FROM tasks t JOIN requests r ON r.id = t.request_id"
            " WHERE t.status = 'open' AND r.status = 'pending' AND t.roles && :roles",
            roles=roles[name],
        )[0]
        row = _scalar(
            session,
            "SELECT t.due_at, t.id FROM tasks t JOIN requests r ON r.id = t.request_id"
            " WHERE t.status = 'open' AND r.status = 'pending' AND t.roles && :roles"
            " ORDER BY t.due_at, t.id OFFSET :k LIMIT 1",
            roles=roles[name],
            k=int(count * 0.8),
        )
        deep_tasks[name] = requests_repo.TaskCursor(row[0], row[1]) if row else None
    deep_request = _scalar(
        session,
        "SELECT created_at, id FROM requests ORDER BY created_at DESC, id DESC OFFSET :k LIMIT 1",
        k=int(requests * 0.8),
    )
    streams = [
        f"request:{r}"
        for r in session.execute(
            text("SELECT id FROM requests ORDER BY id LIMIT :n"), {"n": RUNS}
        ).scalars()
    ]
    max_id = _scalar(session, "SELECT max(id) FROM audit_events")[0]
    history_end = HISTORY_START + requests * ARRIVAL
    rng = random.Random(11)
    windows = [
        HISTORY_START + (history_end - DAY - HISTORY_START) * rng.random() for _ in range(RUNS)
    ]
    window_middles = [
        _scalar(
            session,
            "SELECT id FROM audit_events WHERE occurred_at >= :a AND occurred_at < :b"
            " ORDER BY occurred_at OFFSET 0 LIMIT 1",
            a=start + DAY / 2,
            b=start + DAY,
        )
        for start in windows
    ]
    requester_ids = [people[k.requester].id for k in MIX]
    actors = list(people)

    def approver(run: int) -> str:
        return APPROVERS[run % len(APPROVERS)]

    def queue(run: int, session: Session, deep: bool) -> Any:
        name = approver(run)
        return requests_repo.task_queue(
            session,
            user_id=people[name].id,
            roles=roles[name],
            team=teams[name],
            after=deep_tasks[name] if deep else None,
        )

    def window_middle(run: int) -> int | None:
        row = window_middles[run % RUNS]
        return int(row[0]) if row else None

    return {
        "task_queue_first": lambda s, run: queue(run, s, False),
        "task_queue_deep": lambda s, run: queue(run, s, True),
        "requests_all_first": lambda s, run: requests_repo.request_page(s, requester_id=None),
        "requests_mine_first": lambda s, run: requests_repo.request_page(
            s, requester_id=requester_ids[run % len(requester_ids)]
        ),
        "requests_pending_first": lambda s, run: requests_repo.request_page(
            s, requester_id=None, status="pending"
        ),
        "requests_all_deep": lambda s, run: requests_repo.request_page(
            s,
            requester_id=None,
            before=requests_repo.RequestCursor(deep_request[0], deep_request[1]),
        ),
        "audit_stream": lambda s, run: audit.search(
            s, audit.AuditQuery(stream=streams[run % len(streams)])
        ),
        "audit_actor_first": lambda s, run: audit.search(
            s, audit.AuditQuery(actor=actors[run % len(actors)])
        ),
        "audit_actor_deep": lambda s, run: audit.search(
            s, audit.AuditQuery(actor=actors[run % len(actors)], before_id=int(max_id * 0.2))
        ),
        "audit_window_first": lambda s, run: audit.search(
            s, audit.AuditQuery(since=windows[run], until=windows[run] + DAY)
        ),
        "audit_window_deep": lambda s, run: audit.search(
            s,
            audit.AuditQuery(
                since=windows[run], until=windows[run] + DAY, before_id=window_middle(run)
            ),
        ),
        "audit_all_first": lambda s, run: audit.search(s, audit.AuditQuery()),
    }


@dataclass
class Measured:
    timings: list[float]
    statement: str  # the SQL of its last run, as sent to the driver, with its parameters
    parameters: Any

    def p95(self) -> float:
        return percentile(self.timings, 95)


def measure(session: Session, queries: dict[str, Query]) -> dict[str, Measured]:
    sent: list[tuple[str, Any]] = []

    def remember(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        sent.append((statement, parameters))

    engine = session.get_bind()
    event.listen(engine, "before_cursor_execute", remember)
    results: dict[str, Measured] = {}
    try:
        for name, query in queries.items():
            for run in range(WARMUP):
                query(session, run)
            timings = []
            for run in range(RUNS):
                started = time.perf_counter()
                query(session, run)
                timings.append((time.perf_counter() - started) * 1000)
            results[name] = Measured(timings, *sent[-1])
            session.rollback()  # a fresh snapshot per query; nothing is written
    finally:
        event.remove(engine, "before_cursor_execute", remember)
    return results


def explain(session: Session, name: str, measured: Measured) -> None:
    """EXPLAIN ANALYZE of the query's last run, to stderr: why it does not scale."""
    plan = session.connection().exec_driver_sql(
        f"EXPLAIN (ANALYZE, BUFFERS) {measured.statement}", measured.parameters
    )
    log(f"{name} does not scale; its plan:")
    for (line,) in plan:
        print(f"    {line}", file=sys.stderr)
    session.rollback()


# --- the run ------------------------------------------------------------------------------


def size_label(requests: int) -> str:
    for unit, scale in (("m", 1_000_000), ("k", 1_000)):
        if requests >= scale and requests % scale == 0:
            return f"{requests // scale}{unit}"
    return str(requests)


def policy_chains() -> dict[str, dict[str, Any]]:
    """The chain snapshot of every kind in the mix, as a request stores it."""
    engine = PolicyEngine.load()
    chains = {}
    for kind in MIX:
        for probe in ({}, {"amount": "50000", "change_percent": "90"}):
            snapshot = engine.chain_for(kind.action, probe)
            if snapshot.tier == kind.tier:
                chains[kind.name] = dataclasses.asdict(snapshot)
                break
        else:
            raise RuntimeError(f"no tier {kind.tier} in the chain of {kind.action}")
    return chains


def load_people(url: str) -> dict[str, Person]:
    engine = make_engine(url, pool_size=1)
    try:
        with transaction(make_session_factory(engine)) as session:
            seed_users(session)
            rows = session.execute(text("SELECT id, username FROM users ORDER BY id"))
            return {name: Person(id, name, f"10.0.{id // 250}.{id % 250}") for id, name in rows}
    finally:
        engine.dispose()


def verify_audit(session: Session) -> None:
    report = audit.verify(session, b"no checkpoints were written")
    if not report.ok:
        raise RuntimeError(f"audit verify failed: {report.problems[0]}")
    log(f"audit verify: OK, {report.events:,} events in {report.streams:,} streams")


def run_size(
    url: str, history: History, requests: int, baseline: dict[str, Measured] | None = None
) -> dict[str, Measured]:
    """Grow the history to `requests` and measure; explain what grew 3x over `baseline`."""
    label = size_label(requests)
    before = history.written
    log(f"writing the history up to {requests:,} requests")
    events, seconds = write_history(url, history, requests)
    figure(f"history_insert_rate_{label}", events / seconds, "events/s")
    figure(f"history_insert_requests_rate_{label}", (requests - before) / seconds, "requests/s")
    figure(f"database_size_{label}", database_size_mb(url), "MB")
    engine = make_engine(url, pool_size=1)
    try:
        with make_session_factory(engine)() as session:
            if events < 2_000_000:
                verify_audit(session)
            queries = build_queries(session, history.people, requests)
            results = measure(session, queries)
            for name, measured in results.items():
                if baseline and measured.p95() > NOT_SCALING * baseline[name].p95():
                    explain(session, name, measured)
    finally:
        engine.dispose()
    for name, measured in results.items():
        figure(f"{name}_p50_{label}", statistics.median(measured.timings), "ms")
        figure(f"{name}_p95_{label}", measured.p95(), "ms")
    return results


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.read_model", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--small", type=int, default=10_000, help="S1 requests (default 10k)")
    parser.add_argument("--large", type=int, default=1_000_000, help="S2 requests (default 1M)")
    parser.add_argument("--quick", action="store_true", help="1k and 100k: a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.small, args.large = 1_000, 100_000
    if not 0 < args.small < args.large:
        parser.error("--small must be positive and below --large")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    chains = policy_chains()
    with (
        tempfile.TemporaryDirectory(prefix="bench-read-model-", ignore_cleanup_errors=True) as tmp,
        ExitStack() as stack,
    ):
        services = start_services(Path(tmp), stack, log, fresh_database=True, temporal=False)
        upgrade(services.database_url)
        history = History(load_people(services.database_url), chains)
        small = run_size(services.database_url, history, args.small)
        large = run_size(services.database_url, history, args.large, baseline=small)
        s1, s2 = size_label(args.small), size_label(args.large)
        for name, measured in small.items():
            ratio(f"{name}_{s2}_vs_{s1}", large[name].p95(), measured.p95())
        figure("peak_rss", peak_rss_mb(), "MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

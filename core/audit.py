"""The audit store: append-only events, SHA-256 hash-chained per stream, signed checkpoints.

Every write in the product goes through `append`. Streams (`request:<id>`, `user:<name>`,
`system`) are chained independently so writers of different streams never wait on each
other; `checkpoint` binds all stream heads under an HMAC signature so that truncating a
stream and rewriting its head is still detected.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import literal, select, text, tuple_
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from core.models import AuditCheckpoint, AuditEvent, AuditStreamHead
from core.repositories.scope import EVERY_PLAYER, PlayerScope

GENESIS_HASH = "0" * 64
SENSITIVITY_LEVELS = ("low", "normal", "high", "security")
ACTOR_TYPES = ("user", "system", "slack", "pagerduty")


@dataclass(frozen=True)
class NewAuditEvent:
    event_id: uuid.UUID
    stream: str
    action: str
    target: str
    actor: str
    actor_type: str = "user"
    channel: str = "system"
    occurred_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    sensitivity: str = "normal"
    ip: str | None = None
    device: str | None = None


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _timestamp(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def event_hash(event: AuditEvent) -> str:
    """SHA-256 over the canonical encoding of every field except the row id and the hash."""
    body = {
        "event_id": str(event.event_id),
        "stream": event.stream,
        "seq": event.seq,
        "occurred_at": _timestamp(event.occurred_at),
        "actor": event.actor,
        "actor_type": event.actor_type,
        "channel": event.channel,
        "ip": event.ip,
        "device": event.device,
        "action": event.action,
        "target": event.target,
        "before": event.before,
        "after": event.after,
        "sensitivity": event.sensitivity,
        "prev_hash": event.prev_hash,
    }
    return hashlib.sha256(_canonical(body)).hexdigest()


@dataclass(frozen=True)
class AppendResult:
    event: AuditEvent
    created: bool


class Origin(Protocol):
    """Where a request came from (workflows.contracts.Origin fits)."""

    @property
    def channel(self) -> str: ...
    @property
    def ip(self) -> str | None: ...
    @property
    def device(self) -> str | None: ...


def append_from(
    session: Session,
    origin: Origin,
    *,
    stream: str,
    action: str,
    target: str,
    actor: str,
    after: dict[str, Any] | None,
    before: dict[str, Any] | None = None,
    actor_type: str = "user",
    sensitivity: str = "normal",
) -> AppendResult:
    """A new event, from the channel, address and device of `origin`."""
    return append(
        session,
        NewAuditEvent(
            event_id=uuid.uuid4(),
            stream=stream,
            action=action,
            target=target,
            actor=actor,
            actor_type=actor_type,
            channel=origin.channel,
            ip=origin.ip,
            device=origin.device,
            before=before,
            after=after,
            sensitivity=sensitivity,
        ),
    )


def append_security_event(
    session: Session,
    *,
    stream: str,
    action: str,
    target: str,
    actor: str,
    origin: Origin,
    after: dict[str, Any] | None,
    before: dict[str, Any] | None = None,
    actor_type: str = "user",
) -> AppendResult:
    """A new security-sensitive event (sign-ins, MFA, sessions, keys, permissions)."""
    return append_from(
        session,
        origin,
        stream=stream,
        action=action,
        target=target,
        actor=actor,
        after=after,
        before=before,
        actor_type=actor_type,
        sensitivity="security",
    )


def append(session: Session, new: NewAuditEvent) -> AppendResult:
    """Append one event to its stream inside the caller's transaction.

    Idempotent on `event_id`: appending the same id again returns the stored event with
    `created=False` and writes nothing.
    """
    if new.sensitivity not in SENSITIVITY_LEVELS:
        raise ValueError(f"unknown sensitivity {new.sensitivity!r}")
    if new.actor_type not in ACTOR_TYPES:
        raise ValueError(f"unknown actor type {new.actor_type!r}")
    session.execute(
        pg_insert(AuditStreamHead)
        .values(stream=new.stream, last_seq=0, last_hash=GENESIS_HASH)
        .on_conflict_do_nothing(index_elements=["stream"])
    )
    head = session.execute(
        select(AuditStreamHead).where(AuditStreamHead.stream == new.stream).with_for_update()
    ).scalar_one()
    existing = session.execute(
        select(AuditEvent).where(AuditEvent.event_id == new.event_id)
    ).scalar_one_or_none()
    if existing is not None:
        return AppendResult(existing, created=False)
    event = AuditEvent(
        event_id=new.event_id,
        stream=new.stream,
        seq=head.last_seq + 1,
        occurred_at=new.occurred_at,
        actor=new.actor,
        actor_type=new.actor_type,
        channel=new.channel,
        ip=new.ip,
        device=new.device,
        action=new.action,
        target=new.target,
        before=new.before,
        after=new.after,
        sensitivity=new.sensitivity,
        prev_hash=head.last_hash,
    )
    event.hash = event_hash(event)
    session.add(event)
    head.last_seq = event.seq
    head.last_hash = event.hash
    session.flush()
    return AppendResult(event, created=True)


# --- reading -------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditQuery:
    stream: str | None = None
    actor: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    before_id: int | None = None
    limit: int = 50
    sensitivity: str | None = None  # one of SENSITIVITY_LEVELS
    # The viewer's data scope: narrowed, they see only events of requests within it.
    scope: PlayerScope = EVERY_PLAYER


def search(session: Session, query: AuditQuery) -> list[AuditEvent]:
    """Newest first, keyset-paginated; `before_id` (the last id shown) is the cursor.

    With a time window the events come in the order they happened and the window's own
    index serves the page (ordering by id there would walk every newer row first); without
    one, by id. The scope narrows in the same WHERE, so paging is unchanged.
    """
    stmt = select(AuditEvent).limit(query.limit)
    in_scope = query.scope.audit_condition()
    if in_scope is not None:
        stmt = stmt.where(in_scope)
    if query.stream is not None:
        stmt = stmt.where(AuditEvent.stream == query.stream)
    if query.actor is not None:
        stmt = stmt.where(AuditEvent.actor == query.actor)
    if query.sensitivity is not None:
        stmt = stmt.where(AuditEvent.sensitivity == query.sensitivity)
    if query.since is not None:
        stmt = stmt.where(AuditEvent.occurred_at >= query.since)
    if query.until is not None:
        stmt = stmt.where(AuditEvent.occurred_at < query.until)
    by_time = query.since is not None or query.until is not None
    if by_time:
        stmt = stmt.order_by(AuditEvent.occurred_at.desc(), AuditEvent.id.desc())
    else:
        stmt = stmt.order_by(AuditEvent.id.desc())
    if query.before_id is not None and by_time:
        cursor_time = (
            select(AuditEvent.occurred_at).where(AuditEvent.id == query.before_id).scalar_subquery()
        )
        stmt = stmt.where(
            tuple_(AuditEvent.occurred_at, AuditEvent.id)
            < tuple_(cursor_time, literal(query.before_id))
        )
    elif query.before_id is not None:
        stmt = stmt.where(AuditEvent.id < query.before_id)
    return list(session.execute(stmt).scalars())


def stream_events(session: Session, stream: str) -> list[AuditEvent]:
    stmt = select(AuditEvent).where(AuditEvent.stream == stream).order_by(AuditEvent.seq)
    return list(session.execute(stmt).scalars())


# --- verification --------------------------------------------------------------------


@dataclass(frozen=True)
class AuditProblem:
    stream: str
    seq: int | None
    event_id: str | None
    message: str

    def __str__(self) -> str:
        where = f"stream {self.stream}"
        if self.seq is not None:
            where += f" seq {self.seq} (event {self.event_id})"
        return f"{where}: {self.message}"


@dataclass
class VerifyReport:
    streams: int = 0
    events: int = 0
    checkpoints: int = 0
    problems: list[AuditProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _verify_stream_events(rows: Iterator[AuditEvent], report: VerifyReport) -> dict[str, Any]:
    """Walk every event in (stream, seq) order; return the last (seq, hash, id) per stream."""
    tails: dict[str, tuple[int, str]] = {}
    stream: str | None = None
    expected_seq, prev_hash, prev_id = 1, GENESIS_HASH, 0
    for event in rows:
        if event.stream != stream:
            stream = event.stream
            expected_seq, prev_hash, prev_id = 1, GENESIS_HASH, 0
            report.streams += 1
        report.events += 1

        def problem(message: str, event: AuditEvent = event) -> None:
            report.problems.append(
                AuditProblem(event.stream, event.seq, str(event.event_id), message)
            )

        if event.seq != expected_seq:
            problem(f"expected seq {expected_seq}: events before it are missing (deleted)")
        elif event.prev_hash != prev_hash:
            problem("previous-hash link broken: the event before it was replaced")
        elif event_hash(event) != event.hash:
            problem("hash mismatch: the row was altered after it was written")
        elif event.id < prev_id:
            problem("inserted out of order: written after events that follow it")
        expected_seq, prev_hash, prev_id = event.seq + 1, event.hash, event.id
        tails[event.stream] = (event.seq, event.hash)
    return tails


def checkpoint_digest(heads: dict[str, list[Any]]) -> str:
    return hashlib.sha256(_canonical(heads)).hexdigest()


def _sign(digest: str, key: bytes) -> str:
    return hmac.new(key, digest.encode(), hashlib.sha256).hexdigest()


def verify(session: Session, signing_key: bytes) -> VerifyReport:
    """Recompute every chain, compare with the stream heads and the signed checkpoints."""
    report = VerifyReport()
    rows = (
        session.execute(
            select(AuditEvent)
            .order_by(AuditEvent.stream, AuditEvent.seq)
            .execution_options(yield_per=2000)
        )
        .scalars()
        .__iter__()
    )
    tails = _verify_stream_events(rows, report)

    heads = {h.stream: h for h in session.execute(select(AuditStreamHead)).scalars()}
    for name, head in heads.items():
        seq, digest = tails.get(name, (0, GENESIS_HASH))
        if head.last_seq != seq or head.last_hash != digest:
            report.problems.append(
                AuditProblem(
                    name,
                    None,
                    None,
                    f"stream head says seq {head.last_seq} but the chain ends at seq {seq}: "
                    + ("events were deleted" if seq < head.last_seq else "events were inserted"),
                )
            )
    for name in tails.keys() - heads.keys():
        report.problems.append(AuditProblem(name, None, None, "events without a stream head"))

    for cp in session.execute(select(AuditCheckpoint).order_by(AuditCheckpoint.id)).scalars():
        report.checkpoints += 1
        if checkpoint_digest(cp.heads) != cp.digest or not hmac.compare_digest(
            _sign(cp.digest, signing_key), cp.signature
        ):
            report.problems.append(
                AuditProblem("checkpoint", cp.id, None, "signature does not match its contents")
            )
            continue
        for name, (seq, digest) in cp.heads.items():
            found = session.execute(
                select(AuditEvent.hash).where(AuditEvent.stream == name, AuditEvent.seq == seq)
            ).scalar_one_or_none()
            if found != digest:
                report.problems.append(
                    AuditProblem(
                        name,
                        seq,
                        None,
                        f"checkpoint {cp.id} bound this event, which is now missing or changed",
                    )
                )
    report.problems.sort(key=lambda p: (p.stream == "checkpoint", p.stream, p.seq or 0))
    return report


def write_checkpoint(session: Session, signing_key: bytes) -> AuditCheckpoint:
    heads = {
        h.stream: [h.last_seq, h.last_hash]
        for h in session.execute(select(AuditStreamHead).order_by(AuditStreamHead.stream)).scalars()
        if h.last_seq > 0
    }
    digest = checkpoint_digest(heads)
    cp = AuditCheckpoint(
        created_at=datetime.now(UTC),
        heads=heads,
        digest=digest,
        signature=_sign(digest, signing_key),
    )
    session.add(cp)
    session.flush()
    return cp


def allow_retention_delete(session: Session) -> None:
    """Only the retention job calls this; the trigger refuses deletes otherwise."""
    session.execute(text("SET LOCAL backoffice.audit_retention = 'on'"))

"""The audit store: chains verify, and every kind of tampering is named."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from core import audit
from core.db import transaction

KEY = b"audit-test-key"


def write_stream(sessions, events: int = 4) -> str:
    stream = f"test:{uuid.uuid4()}"
    with transaction(sessions) as session:
        for number in range(events):
            audit.append(
                session,
                audit.NewAuditEvent(
                    event_id=uuid.uuid4(),
                    stream=stream,
                    action="test.event",
                    target=f"thing:{number}",
                    actor="tester",
                    after={"number": number},
                ),
            )
    return stream


def verify(sessions) -> audit.VerifyReport:
    with sessions() as session:
        return audit.verify(session, KEY)


def problems_in(report: audit.VerifyReport, stream: str) -> list[audit.AuditProblem]:
    return [p for p in report.problems if p.stream == stream]


def tamper(sessions, sql: str, **params: object) -> None:
    """What a DBA with raw access could do: switch the append-only trigger off and write."""
    with transaction(sessions) as session:
        session.execute(text("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only"))
        session.execute(text(sql), params)
        session.execute(text("ALTER TABLE audit_events ENABLE TRIGGER audit_events_append_only"))


def test_chain_links_each_event_to_the_one_before(sessions):
    stream = write_stream(sessions, 3)
    with sessions() as session:
        events = audit.stream_events(session, stream)
    assert [e.seq for e in events] == [1, 2, 3]
    assert events[0].prev_hash == audit.GENESIS_HASH
    assert events[1].prev_hash == events[0].hash and events[2].prev_hash == events[1].hash
    assert all(audit.event_hash(e) == e.hash for e in events)
    assert not problems_in(verify(sessions), stream)


def test_append_is_idempotent_on_event_id(sessions):
    event = audit.NewAuditEvent(
        event_id=uuid.uuid4(), stream=f"test:{uuid.uuid4()}", action="a", target="t", actor="x"
    )
    with transaction(sessions) as session:
        first = audit.append(session, event)
    with transaction(sessions) as session:
        again = audit.append(session, event)
        assert again.created is False and again.event.id == first.event.id
        assert len(audit.stream_events(session, event.stream)) == 1


def test_updates_and_deletes_are_refused_by_the_database(sessions):
    stream = write_stream(sessions, 1)
    for sql in (
        "UPDATE audit_events SET actor = 'mallory' WHERE stream = :s",
        "DELETE FROM audit_events WHERE stream = :s",
    ):
        with pytest.raises(DBAPIError, match="append-only"), transaction(sessions) as session:
            session.execute(text(sql), {"s": stream})


def test_altered_row_is_named(sessions):
    stream = write_stream(sessions)
    tamper(
        sessions,
        "UPDATE audit_events SET actor = 'mallory' WHERE stream = :s AND seq = 3",
        s=stream,
    )
    found = problems_in(verify(sessions), stream)
    assert found and found[0].seq == 3 and "altered" in found[0].message


def test_deleted_row_is_named(sessions):
    stream = write_stream(sessions)
    tamper(sessions, "DELETE FROM audit_events WHERE stream = :s AND seq = 2", s=stream)
    found = problems_in(verify(sessions), stream)
    assert found and found[0].seq == 3 and "missing" in found[0].message


def test_deleted_last_row_is_caught_by_the_stream_head(sessions):
    stream = write_stream(sessions)
    tamper(sessions, "DELETE FROM audit_events WHERE stream = :s AND seq = 4", s=stream)
    found = problems_in(verify(sessions), stream)
    assert found and "deleted" in found[0].message


def test_row_inserted_out_of_order_is_named(sessions):
    """Delete event 2 and insert an identical copy: its hash still matches, its position not."""
    stream = write_stream(sessions)
    tamper(
        sessions,
        """
        WITH gone AS (DELETE FROM audit_events WHERE stream = :s AND seq = 2 RETURNING *)
        INSERT INTO audit_events (event_id, stream, seq, occurred_at, actor, actor_type, channel,
            ip, device, action, target, before, after, sensitivity, prev_hash, hash)
        SELECT event_id, stream, seq, occurred_at, actor, actor_type, channel, ip, device, action,
            target, before, after, sensitivity, prev_hash, hash FROM gone
        """,
        s=stream,
    )
    found = problems_in(verify(sessions), stream)
    assert found and "out of order" in found[0].message


def test_forged_event_appended_without_its_head_is_named(sessions):
    stream = write_stream(sessions, 2)
    with sessions() as session:
        last = audit.stream_events(session, stream)[-1]
    forged = audit.AuditEvent(
        event_id=uuid.uuid4(),
        stream=stream,
        seq=3,
        occurred_at=last.occurred_at,
        actor="mallory",
        actor_type="user",
        channel="api",
        ip=None,
        device=None,
        action="test.event",
        target="x",
        before=None,
        after=None,
        sensitivity="normal",
        prev_hash=last.hash,
    )
    forged.hash = audit.event_hash(forged)
    with transaction(sessions) as session:
        session.add(forged)
    found = problems_in(verify(sessions), stream)
    assert found and "inserted" in found[0].message


def test_checkpoint_binds_heads_even_if_a_stream_is_rewritten(sessions):
    stream = write_stream(sessions, 3)
    with transaction(sessions) as session:
        audit.write_checkpoint(session, KEY)
    # Rewrite the whole stream consistently (hashes and head recomputed): only the
    # signed checkpoint can tell.
    with transaction(sessions) as session:
        session.execute(text("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only"))
        events = audit.stream_events(session, stream)
        prev = audit.GENESIS_HASH
        for event in events:
            event.actor = "mallory"
            event.prev_hash = prev
            event.hash = audit.event_hash(event)
            prev = event.hash
        session.flush()
        session.execute(
            text("UPDATE audit_stream_heads SET last_hash = :h WHERE stream = :s"),
            {"h": prev, "s": stream},
        )
        session.execute(text("ALTER TABLE audit_events ENABLE TRIGGER audit_events_append_only"))
    found = problems_in(verify(sessions), stream)
    assert found and "checkpoint" in found[0].message


def test_cli_exits_non_zero_and_names_the_first_bad_event(sessions, database_url):
    stream = write_stream(sessions)
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "BACKOFFICE_ENV": "production",
        "SECRET_KEY": "s" * 40,
        "AUDIT_SIGNING_KEY": KEY.decode() + "x" * 32,
    }
    tamper(
        sessions,
        "UPDATE audit_events SET target = 'elsewhere' WHERE stream = :s AND seq = 2",
        s=stream,
    )
    result = subprocess.run(
        [sys.executable, "-m", "core.cli", "audit", "verify"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "first bad event" in result.stderr
    assert f"stream {stream} seq 2" in result.stderr


def test_a_time_window_pages_in_the_order_events_happened(sessions):
    """Events recorded late (a retried activity) still appear once, in time order."""
    from datetime import UTC, datetime, timedelta

    base = datetime(2031, 5, 1, tzinfo=UTC)
    minutes = [5, 1, 4, 2, 3, 6, 0]  # insertion order differs from time order
    actor = f"window-{uuid.uuid4().hex[:8]}"
    with transaction(sessions) as session:
        for minute in minutes:
            audit.append(
                session,
                audit.NewAuditEvent(
                    event_id=uuid.uuid4(),
                    stream=f"test:{uuid.uuid4()}",
                    action="test.event",
                    target=f"minute:{minute}",
                    actor=actor,
                    occurred_at=base + timedelta(minutes=minute),
                ),
            )
    seen: list[str] = []
    before = None
    with sessions() as session:
        while True:
            page = audit.search(
                session,
                audit.AuditQuery(
                    actor=actor,
                    since=base + timedelta(minutes=1),
                    until=base + timedelta(minutes=6),
                    before_id=before,
                    limit=2,
                ),
            )
            seen += [event.target for event in page]
            if len(page) < 2:
                break
            before = page[-1].id
    assert seen == [f"minute:{m}" for m in (5, 4, 3, 2, 1)]

"""Exports: what a list shows, as CSV streamed batch by batch, and the audit event that
records who took which rows out.

The rows come from the same scoped queries as the list they export, so an export never
holds a row its taker could not see; it is written while it is read, so memory does not
grow with its length.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.orm import Session

from core import audit
from core.models import AuditEvent

EXPORT_BATCH = 1000  # rows per query while exporting
FLUSH_BYTES = 64 * 1024
# A spreadsheet runs a cell beginning with these as a formula (CSV injection): a player
# called "=HYPERLINK(...)" must reach the analyst as text.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, int | Decimal | date):
        return str(value)  # a negative amount stays a number
    text = str(value)
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


@dataclass(frozen=True)
class Column:
    header: str
    value: Callable[[Any], object]


def as_json(value: object) -> str:
    return "" if value is None else json.dumps(value, sort_keys=True, default=str)


def record_id(row: Any) -> object:
    return row.id


# Everything an investigator needs to check an event against its chain: the hashes too.
AUDIT_COLUMNS: tuple[Column, ...] = (
    Column("id", record_id),
    Column("occurred_at", lambda e: e.occurred_at),
    Column("stream", lambda e: e.stream),
    Column("seq", lambda e: e.seq),
    Column("action", lambda e: e.action),
    Column("sensitivity", lambda e: e.sensitivity),
    Column("actor", lambda e: e.actor),
    Column("actor_type", lambda e: e.actor_type),
    Column("channel", lambda e: e.channel),
    Column("ip", lambda e: e.ip),
    Column("device", lambda e: e.device),
    Column("target", lambda e: e.target),
    Column("before", lambda e: as_json(e.before)),
    Column("after", lambda e: as_json(e.after)),
    Column("prev_hash", lambda e: e.prev_hash),
    Column("hash", lambda e: e.hash),
)


def csv_table(columns: Sequence[Column], rows: Iterable[Any]) -> Iterator[str]:
    """`rows` as CSV with these columns, in pieces (see csv_chunks)."""
    values = ([column.value(row) for column in columns] for row in rows)
    return csv_chunks([column.header for column in columns], values)


def audit_rows(
    sessions: Callable[[], Session], query: audit.AuditQuery, batch: int = EXPORT_BATCH
) -> Iterator[AuditEvent]:
    """Every event the query matches, newest first, read in batches from one snapshot."""
    with sessions() as session:
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        before_id = None
        while True:
            events = audit.search(session, replace(query, before_id=before_id, limit=batch))
            yield from events
            session.expunge_all()  # written out already: memory stays flat
            if len(events) < batch:
                return
            before_id = events[-1].id


def csv_chunks(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> Iterator[str]:
    """The header line, then the rows, yielded in pieces of about FLUSH_BYTES."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(headers)
    for row in rows:
        writer.writerow([csv_cell(value) for value in row])
        if buffer.tell() >= FLUSH_BYTES:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def export_filename(name: str, now: datetime) -> str:
    return f"{name}-{now.astimezone(UTC):%Y%m%dT%H%MZ}.csv"


def record_export(
    session: Session,
    *,
    actor: str,
    origin: audit.Origin,
    what: str,
    filters: dict[str, Any],
) -> None:
    """Audit an export before its first row leaves: a download cut short still counts."""
    audit.append(
        session,
        audit.NewAuditEvent(
            event_id=uuid.uuid4(),
            stream=f"user:{actor}",
            action="data.exported",
            target=what,
            actor=actor,
            channel=origin.channel,
            ip=origin.ip,
            device=origin.device,
            after={"format": "csv", "filters": filters},
            sensitivity="high",
        ),
    )

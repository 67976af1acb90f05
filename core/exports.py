"""Exports: what a list shows, as CSV streamed batch by batch, and the audit event that
records who took which rows out.

The rows come from the same scoped queries as the list they export, so an export never
holds a row its taker could not see. They are read in batches inside one repeatable-read
transaction (one consistent snapshot however long the download) and written while they
are read, so memory does not grow with the export's length. The transaction ends when the
last row is sent or the download is cut short, whichever comes first (see csv_stream).
"""

from __future__ import annotations

import csv
import io
import json
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy import text
from sqlalchemy.orm import Session

from core import audit
from core.models import AuditEvent

EXPORT_BATCH = 1000  # rows per query while exporting
FLUSH_BYTES = 64 * 1024
# A client that stops reading holds the snapshot open; PostgreSQL ends it after this.
STALLED_CLIENT_LIMIT = "10min"
# Excel reads a CSV without it as the local code page and garbles names like "Søren".
BYTE_ORDER_MARK = "\ufeff"
# A spreadsheet runs a cell beginning with these as a formula (CSV injection): a player
# called "=HYPERLINK(...)" must reach the analyst as text.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")

Cursor = TypeVar("Cursor")


def csv_cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    if isinstance(value, int | Decimal | date):
        return str(value)  # a negative amount stays a number
    text = str(value)
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


@dataclass(frozen=True)
class Column:
    header: str
    read: Callable[[Any], object]  # the cell's value from one row


def as_json(value: object) -> str:
    """JSON as the audit store hashes it (sorted keys, compact, not ASCII-escaped)."""
    if value is None:
        return ""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def row_id(row: Any) -> object:
    return row.id


# What an investigator needs to match an event with the store, hashes included. (Text a
# spreadsheet would run gets a leading "'", so byte-exact checking of the chain is
# `backoffice audit verify`'s work, not this file's.)
AUDIT_COLUMNS: tuple[Column, ...] = (
    Column("id", row_id),
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


def read_in_batches(
    sessions: Callable[[], Session],
    batch: Callable[[Session, Cursor | None], tuple[Sequence[Any], Cursor | None]],
) -> Iterator[Any]:
    """Every row of a keyset-paged query: `batch(session, cursor)` gives one batch and the
    cursor after it (None at the end). All of it from one snapshot; rows already handed on
    are let go, so memory stays flat."""
    with sessions() as session:
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        session.execute(
            text(f"SET LOCAL idle_in_transaction_session_timeout = '{STALLED_CLIENT_LIMIT}'")
        )
        cursor: Cursor | None = None
        while True:
            rows, cursor = batch(session, cursor)
            yield from rows
            session.expunge_all()
            if cursor is None:
                return


def audit_rows(
    sessions: Callable[[], Session], query: audit.AuditQuery, size: int = EXPORT_BATCH
) -> Iterator[AuditEvent]:
    """Every event the query matches, newest first (the search's order)."""

    def batch(session: Session, before_id: int | None) -> tuple[list[AuditEvent], int | None]:
        events = audit.search(session, replace(query, before_id=before_id, limit=size))
        return events, events[-1].id if len(events) == size else None

    return read_in_batches(sessions, batch)


def csv_stream(columns: Sequence[Column], rows: Iterable[Any]) -> Iterator[str]:
    """The header line, then a line a row, yielded in pieces of about FLUSH_BYTES.
    Closing it (a download cut short) closes `rows` at once, ending its transaction."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    buffer.write(BYTE_ORDER_MARK)
    writer.writerow([column.header for column in columns])
    try:
        for row in rows:
            writer.writerow([csv_cell(column.read(row)) for column in columns])
            if buffer.tell() >= FLUSH_BYTES:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue()
    finally:
        close = getattr(rows, "close", None)
        if close is not None:
            close()


def export_filename(name: str, now: datetime) -> str:
    return f"{name}-{now.astimezone(UTC):%Y%m%dT%H%MZ}.csv"


class ExportSlots:
    """How many exports may stream at once in this process (EXPORTS_AT_ONCE)."""

    def __init__(self, size: int) -> None:
        self._free = threading.BoundedSemaphore(size)

    def take(self) -> bool:
        return self._free.acquire(blocking=False)

    def give_back(self) -> None:
        self._free.release()


def record_export(
    session: Session,
    *,
    actor: str,
    origin: audit.Origin,
    what: str,
    filters: dict[str, Any],
    api_key: str | None = None,
) -> None:
    """Audit an export before its first row leaves: a download cut short still counts.
    `api_key`: the prefix of the key it was taken with, if any."""
    after: dict[str, Any] = {"format": "csv", "filters": filters}
    if api_key is not None:
        after["api_key"] = api_key
    audit.append_from(
        session,
        origin,
        stream=f"user:{actor}",
        action="data.exported",
        target=what,
        actor=actor,
        after=after,
        sensitivity="high",
    )

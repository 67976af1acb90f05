"""Times as people type them: naive values are UTC, which every page says."""

from __future__ import annotations

from datetime import UTC, datetime


def as_utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def parse_utc(text: str) -> datetime:
    """ISO 8601 date and time, UTC unless it names an offset; ValueError otherwise."""
    return as_utc(datetime.fromisoformat(text.strip()))

"""Substring search shared by the list queries."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, or_


def contains_pattern(text: str) -> str:
    """An ILIKE pattern matching `text` anywhere, with its own wildcards taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def matches_any(query: str | None, *columns: Any) -> ColumnElement[bool] | None:
    """Rows where any of the columns contains `query`; None (no condition) without one."""
    if not query:
        return None
    pattern = contains_pattern(query)
    return or_(*(column.ilike(pattern, escape="\\") for column in columns))

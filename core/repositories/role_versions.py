"""Approved role definitions (versions over policies/roles.yaml), and the watcher that
keeps a process's policy engine on the latest of them."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable

from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from core.db import SessionFactory
from core.models import RoleVersion
from policies.engine import PolicyEngine, PolicyError, RoleDef

log = logging.getLogger(__name__)

# How often a process asks the database whether a role change was approved since.
CHECK_EVERY_SECONDS = 1.0


def counter(session: Session) -> int:
    """The id of the newest version: it changes whenever a role change is activated."""
    return int(session.execute(select(func.coalesce(func.max(RoleVersion.id), 0))).scalar_one())


def latest_per_role(session: Session) -> dict[str, RoleVersion]:
    rows = session.execute(
        select(RoleVersion)
        .distinct(RoleVersion.role)
        .order_by(RoleVersion.role, RoleVersion.version.desc())
    ).scalars()
    return {row.role: row for row in rows}


def latest(session: Session, role: str) -> RoleVersion | None:
    return session.execute(
        select(RoleVersion)
        .where(RoleVersion.role == role)
        .order_by(RoleVersion.version.desc())
        .limit(1)
    ).scalar_one_or_none()


def history(session: Session, role: str | None = None, limit: int = 200) -> list[RoleVersion]:
    """Versions, newest first (of one role, or of every role)."""
    query = select(RoleVersion).order_by(RoleVersion.id.desc()).limit(limit)
    if role is not None:
        query = query.where(RoleVersion.role == role)
    return list(session.execute(query).scalars())


def for_request(session: Session, request_id: uuid.UUID) -> RoleVersion | None:
    return session.execute(
        select(RoleVersion).where(RoleVersion.request_id == request_id)
    ).scalar_one_or_none()


class OverridesWatcher:
    """Reloads the engine's overrides when the version counter moved: at most one query
    every `every` seconds per process, and only the reload when it did."""

    def __init__(
        self,
        sessions: SessionFactory,
        every: float = CHECK_EVERY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessions = sessions
        self._every = every
        self._clock = clock
        self._checked_at = float("-inf")
        self._lock = threading.Lock()

    def __call__(self, engine: PolicyEngine) -> None:
        if self._clock() - self._checked_at < self._every:
            return
        if not self._lock.acquire(blocking=False):
            return  # another thread is checking: the current roles serve meanwhile
        try:
            self.reload(engine)
        finally:
            self._lock.release()

    def reload(self, engine: PolicyEngine, force: bool = False) -> None:
        """Put the latest approved versions in force if the counter moved (or `force`)."""
        self._checked_at = self._clock()
        try:
            with self._sessions() as session:
                version = counter(session)
                if version == engine.overrides_version and not force:
                    return
                overrides = {
                    role: RoleDef.model_validate(row.definition)
                    for role, row in latest_per_role(session).items()
                    if role in engine.defaults.roles
                }
        except SQLAlchemyError:
            log.exception("role versions unreadable; keeping the roles in force")
            return
        try:
            engine.apply_overrides(version, overrides)
        except PolicyError:
            # A version the current roles.yaml no longer accepts (say, a workspace since
            # removed from the file): keep the roles in force and say so.
            log.exception("role versions up to %s do not fit policies/roles.yaml", version)

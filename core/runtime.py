"""What a running process holds: settings, database sessions, Temporal client, policies."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine
from temporalio.client import Client

from core.db import SessionFactory
from core.repositories.role_versions import OverridesWatcher
from core.settings import Settings
from policies.engine import PolicyEngine


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    sessions: SessionFactory
    temporal: Client
    policy: PolicyEngine
    task_queue: str

    def __post_init__(self) -> None:
        # Role changes approved in the app (by any process) come into force here too.
        self.policy.watch_overrides(OverridesWatcher(self.sessions))

"""What a running process holds: settings, database sessions, Temporal client, policies."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine
from temporalio.client import Client

from core.db import SessionFactory
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

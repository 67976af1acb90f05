"""Fault-injection fixtures: the worker as a real `backoffice worker` process we can SIGKILL.

Each test gets its own task queue, so only the worker process it starts (never the suite's
in-process worker) runs its workflows; the app it drives uses that queue too. Work is held
at a chosen point by locking, from the test, the database row that the worker is about to
write: the worker's statement then waits inside its open transaction, where we kill it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from sqlalchemy import Connection, Engine, func, select, text
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

from api.app import create_app
from core import audit
from core.db import SessionFactory
from core.models import ApprovalRequest, AuditEvent, Decision, Payment, Task
from core.runtime import Runtime
from core.settings import PROJECT_ROOT, Settings
from tests.conftest import AUDIT_KEY, Tokens

_PR_SET_PDEATHSIG = 1

# The audit trail of a large withdrawal (manager, then director) that ran to the end.
LARGE_TRAIL = [
    "request.submitted",
    "request.step_opened",
    "request.decision",
    "request.step_approved",
    "request.step_opened",
    "request.decision",
    "request.step_approved",
    "request.approved",
    "request.executed",
]
SMALL_TRAIL = [
    "request.submitted",
    "request.step_opened",
    "request.decision",
    "request.step_approved",
    "request.approved",
    "request.executed",
]


def _die_with_parent() -> None:
    # A crashed pytest must not leave a worker behind polling a dead server.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port_block(size: int) -> int:
    """A port P with P..P+size-1 all free (a Temporal dev server uses its port, +1 and +2)."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + size > 65535:
            continue
        free = True
        for port in range(base, base + size):
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    free = False
        if free:
            return base
    raise RuntimeError("no free port block")


def processes_using(path: Path) -> list[str]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            cmdline = " ".join(proc.info["cmdline"] or [])
            if str(path) in cmdline:
                found.append(f"{proc.pid}: {cmdline}")
    return found


# --- the worker process ----------------------------------------------------------------


@dataclass
class WorkerProcess:
    """One `python -m core.cli worker` process; its output goes to `log`."""

    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "core.cli", "worker"],
                env=self.env,
                cwd=PROJECT_ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL: no shutdown, no goodbye to Temporal, connections just drop."""
        assert self.process is not None and self.process.poll() is None, self.output()
        self.process.kill()
        self.process.wait(10)
        assert self.process.returncode == -signal.SIGKILL

    def stop(self) -> None:
        """Ctrl-C (SIGINT), a graceful shutdown."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def terminate(self, timeout: float) -> int | None:
        """SIGTERM, as `docker stop` sends; the exit code, or None if still running."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""


@dataclass
class Workers:
    """Starts worker processes for one task queue and Temporal; stops all of them at the end."""

    client: Client
    task_queue: str
    env: dict[str, str]
    logs: Path
    started: list[WorkerProcess] = field(default_factory=list)

    async def start(self, timeout: float = 30) -> WorkerProcess:
        worker = WorkerProcess(self.env, self.logs / f"worker-{len(self.started) + 1}.log")
        self.started.append(worker)
        worker.start()
        await wait_polling(self.client, self.task_queue, worker, timeout)
        return worker

    def stop_all(self) -> None:
        for worker in self.started:
            worker.stop()


def worker_env(
    settings: Settings, database_url: str, temporal_address: str, task_queue: str
) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TEMPORAL_", "DATABASE_", "BACKOFFICE_", "PLATFORM_"))
    }
    env.update(
        BACKOFFICE_ENV="production",
        DATABASE_URL=database_url,
        TEMPORAL_ADDRESS=temporal_address,
        TEMPORAL_TASK_QUEUE=task_queue,
        SECRET_KEY=settings.secret_key.get_secret_value(),
        AUDIT_SIGNING_KEY=settings.audit_signing_key.get_secret_value(),
    )
    assert env["AUDIT_SIGNING_KEY"].encode() == AUDIT_KEY
    return env


async def wait_polling(
    client: Client, task_queue: str, worker: WorkerProcess, timeout: float = 30
) -> None:
    """Until this worker process polls the task queue (its identity is `<pid>@<host>`)."""
    request = DescribeTaskQueueRequest(
        namespace=client.namespace,
        task_queue=TaskQueue(name=task_queue),
        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert worker.process is not None
        if worker.process.poll() is not None:
            raise AssertionError(
                f"worker exited with {worker.process.returncode}:\n{worker.output()}"
            )
        with contextlib.suppress(Exception):
            described = await client.workflow_service.describe_task_queue(request)
            if any(p.identity.startswith(f"{worker.pid}@") for p in described.pollers):
                return
        await asyncio.sleep(0.2)
    raise AssertionError(f"worker {worker.pid} never polled {task_queue}:\n{worker.output()}")


# --- holding the worker inside a statement ------------------------------------------------


class RowLocks:
    """Row locks held by the test in one open transaction, released on exit (rollback)."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def lock(self, sql: str, **params: object) -> None:
        rows = self._connection.execute(text(sql), params).all()
        assert rows, f"nothing to lock: {sql} {params}"


@contextlib.contextmanager
def row_locks(engine: Engine) -> Iterator[RowLocks]:
    with engine.connect() as connection:
        try:
            yield RowLocks(connection)
        finally:
            connection.rollback()


def lock_waiters(engine: Engine, like: str) -> list[str]:
    """Statements of other sessions of this database waiting for a row lock, matching `like`."""
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT query FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND wait_event_type = 'Lock' AND query ILIKE :like"
            ),
            {"like": like},
        )
        return list(rows.scalars())


async def wait_for_lock_waiters(engine: Engine, like: str, count: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    found: list[str] = []
    while time.monotonic() < deadline:
        found = lock_waiters(engine, like)
        if len(found) >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"expected {count} statements waiting like {like!r}, found {found}")


# --- the app on the test's task queue -----------------------------------------------------


@dataclass
class Harness:
    api: httpx.AsyncClient
    tokens: Tokens
    workers: Workers
    runtime: Runtime


@contextlib.asynccontextmanager
async def harness(
    runtime: Runtime, client: Client, settings: Settings, database_url: str, logs: Path
) -> AsyncIterator[Harness]:
    task_queue = f"faults-{uuid.uuid4()}"
    local = dataclasses.replace(runtime, temporal=client, task_queue=task_queue)
    env = worker_env(settings, database_url, client.service_client.config.target_host, task_queue)
    workers = Workers(client, task_queue, env, logs)
    transport = httpx.ASGITransport(app=create_app(local))
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver", timeout=60
        ) as api:
            yield Harness(api, Tokens(api, {}), workers, local)
    finally:
        workers.stop_all()


@pytest.fixture
async def faults(
    runtime: Runtime,
    temporal_client: Client,
    settings: Settings,
    database_url: str,
    tmp_path: Path,
) -> AsyncIterator[Harness]:
    """The app and worker processes on a fresh task queue of the suite's Temporal."""
    async with harness(runtime, temporal_client, settings, database_url, tmp_path) as h:
        yield h


# --- what must hold once the dust settles ------------------------------------------------


def assert_completed_once(
    sessions: SessionFactory, request_id: str, payment_id: str, trail: list[str]
) -> None:
    """Executed; the payment paid once, by this request; one audit event per transition."""
    rid = uuid.UUID(request_id)
    stream = f"request:{request_id}"
    with sessions() as session:
        request = session.get(ApprovalRequest, rid)
        assert request is not None and request.status == "executed", request_id
        payment = session.get(Payment, payment_id)
        assert payment is not None
        assert (payment.status, payment.paid_by_request) == ("paid", rid)
        events = audit.stream_events(session, stream)
        decisions = session.execute(
            select(func.count()).select_from(Decision).where(Decision.request_id == rid)
        ).scalar_one()
        steps = list(
            session.execute(
                select(Task.status).where(Task.request_id == rid).order_by(Task.step_index)
            ).scalars()
        )
        report = audit.verify(session, AUDIT_KEY)
        paid_events = session.execute(
            select(func.count())
            .select_from(AuditEvent)
            .where(AuditEvent.action == "request.executed", AuditEvent.target == payment_id)
        ).scalar_one()
    actions = [e.action for e in events]
    assert actions == trail, f"{stream}: {Counter(actions)}"
    assert [e.seq for e in events] == list(range(1, len(trail) + 1))
    assert len({e.event_id for e in events}) == len(events)
    deciders = [e.actor for e in events if e.action == "request.decision"]
    assert len(deciders) == len(set(deciders)) == decisions == len(steps)
    assert steps == ["approved"] * len(steps)
    assert paid_events == 1, f"{payment_id} paid by {paid_events} executed events"
    assert [str(p) for p in report.problems if p.stream == stream] == []


def payment_state(sessions: SessionFactory, payment_id: str) -> tuple[Any, ...]:
    with sessions() as session:
        payment = session.get(Payment, payment_id)
        assert payment is not None
        return payment.status, payment.paid_by_request, payment.paid_at

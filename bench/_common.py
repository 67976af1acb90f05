"""What every benchmark shares: figures in the output contract, timing, progress, the
services (PostgreSQL, Temporal), and the app plus a worker served on this event loop."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import resource
import secrets
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import psycopg
import uvicorn

from api.app import create_app
from core.db import normalize_url
from core.embedded import TemporalDevServer, embedded_postgres
from core.runtime import Runtime
from core.seed import DEMO_PASSWORD
from core.settings import Settings
from core.temporal import build_worker

HOST = "127.0.0.1"
CALL_TIMEOUT = 60.0
POLL_INTERVAL = 0.05

Log = Callable[[str], None]


def logger(name: str) -> Log:
    """`log(message)` writing `bench.<name>: message` to stderr."""

    def log(message: str) -> None:
        print(f"bench.{name}: {message}", file=sys.stderr, flush=True)

    return log


# --- figures ----------------------------------------------------------------------------


def percentile(samples: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def figure(name: str, value: float, unit: str) -> None:
    print(f"{name}: {value:.2f} {unit}", flush=True)


def ratio(name: str, ours: float, bare: float) -> None:
    print(f"ratio {name}: {ours / bare:.3f}", flush=True)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


@dataclass
class Latencies:
    """Wall-clock samples of one kind of call, in milliseconds."""

    samples: list[float] = field(default_factory=list)

    async def time(self, call: Awaitable[Any]) -> Any:
        started = time.perf_counter()
        result = await call
        self.samples.append((time.perf_counter() - started) * 1000)
        return result

    def p50(self) -> float:
        return percentile(self.samples, 50)

    def p95(self) -> float:
        return percentile(self.samples, 95)


@dataclass
class Progress:
    """A counter line on stderr, written at every 10% step."""

    label: str
    total: int
    done: int = 0
    _shown: int = -1

    def tick(self, count: int = 1) -> None:
        self.done += count
        tenth = 10 * self.done // max(self.total, 1)
        if tenth != self._shown:
            self._shown = tenth
            print(f"  {self.label}: {self.done}/{self.total}", file=sys.stderr, flush=True)


async def bounded(concurrency: int, jobs: Sequence[Callable[[], Awaitable[Any]]]) -> list[Any]:
    """Run the jobs with at most `concurrency` of them in flight."""
    gate = asyncio.Semaphore(concurrency)

    async def one(job: Callable[[], Awaitable[Any]]) -> Any:
        async with gate:
            return await job()

    return await asyncio.gather(*(one(job) for job in jobs))


# --- services ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Services:
    database_url: str
    temporal_address: str


def _bindable(port: int) -> bool:
    if not 0 < port < 65536:
        return False
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port(span: int = 1, avoid: frozenset[int] = frozenset()) -> int:
    """A free port whose next `span - 1` ports are free too."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            base: int = sock.getsockname()[1]
        ports = range(base, base + span)
        if not avoid.intersection(ports) and all(_bindable(p) for p in ports[1:]):
            return base
    raise RuntimeError(f"no run of {span} free ports found")


def start_temporal(tmp: Path, stack: ExitStack) -> str:
    port = free_port(span=3)  # the dev server also takes port+1 (HTTP) and port+2 (metrics)
    ui_port = free_port(avoid=frozenset(range(port, port + 3)))
    server = TemporalDevServer(db_file=tmp / "temporal.db", port=port, ui_port=ui_port)
    server.start(log_file=tmp / "temporal.log")
    stack.callback(server.stop)
    return server.address


def start_services(
    tmp: Path, stack: ExitStack, log: Log, *, fresh_database: bool = False, temporal: bool = True
) -> Services:
    """PostgreSQL and Temporal: those named by the environment, else embedded ones in `tmp`.

    With `fresh_database`, a throwaway database is created on the `DATABASE_URL` server (and
    dropped at the end), so a run never meets an earlier run's rows. Without `temporal`, no
    Temporal server is started and the address is empty.
    """
    database_url = os.environ.get("DATABASE_URL")
    if database_url and fresh_database:
        database_url = stack.enter_context(throwaway_database(database_url, log))
    elif not database_url:
        log("starting embedded PostgreSQL")
        database_url = stack.enter_context(embedded_postgres(tmp / "pgdata"))
    temporal_address = os.environ.get("TEMPORAL_ADDRESS", "") if temporal else ""
    if temporal and not temporal_address:
        log("starting the Temporal dev server")
        temporal_address = start_temporal(tmp, stack)
    return Services(database_url, temporal_address)


def plain_url(url: str) -> str:
    """The URL as psycopg (rather than SQLAlchemy) spells it."""
    return normalize_url(url).replace("postgresql+psycopg://", "postgresql://")


@contextlib.contextmanager
def throwaway_database(server_url: str, log: Log) -> Iterator[str]:
    name = f"bench_{secrets.token_hex(4)}"
    admin = plain_url(server_url)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    log(f"created database {name}")
    base, _, _ = admin.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def database_size_mb(url: str) -> float:
    with psycopg.connect(plain_url(url)) as conn:
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    assert row is not None
    return float(row[0]) / 2**20


# --- the app and a worker on this loop, driven over HTTP ------------------------------------


def bench_settings() -> Settings:
    return Settings(
        BACKOFFICE_ENV="production",
        SECRET_KEY=secrets.token_urlsafe(48),
        AUDIT_SIGNING_KEY=secrets.token_urlsafe(48),
        TEMPORAL_TASK_QUEUE=f"bench-{uuid.uuid4()}",
        # The load generator is one client per demo user: it measures throughput, and
        # the per-person API limit would measure itself instead.
        API_RATE_LIMITS=False,
    )


def listening_socket() -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, 0))
    return sock


@contextlib.asynccontextmanager
async def serving(runtime: Runtime) -> AsyncIterator[str]:
    """Serve the app and run a worker on this loop; yields the base URL, stops both after."""
    sock = listening_socket()
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(runtime), host=HOST, port=port, log_level="warning")
    )
    worker = build_worker(
        runtime.temporal,
        runtime.sessions,
        runtime.task_queue,
        runtime.settings.audit_signing_key.get_secret_value().encode(),
    )
    worker_task = asyncio.create_task(worker.run())
    server_task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if server_task.done():
                raise RuntimeError("the web server did not start")
            await asyncio.sleep(0.02)
        yield f"http://{HOST}:{port}"
    finally:
        server.should_exit = True
        await worker.shutdown()
        await asyncio.gather(server_task, worker_task, return_exceptions=True)
        sock.close()


def http_client(base_url: str, concurrency: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=2 * concurrency, max_keepalive_connections=concurrency)
    return httpx.AsyncClient(base_url=base_url, timeout=CALL_TIMEOUT, limits=limits)


async def login(http: httpx.AsyncClient, username: str) -> dict[str, str]:
    response = await http.post(
        "/api/v1/auth/token", json={"username": username, "password": DEMO_PASSWORD}
    )
    expect(response, 200)
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def expect(response: httpx.Response, status: int) -> None:
    if response.status_code != status:
        raise RuntimeError(
            f"{response.request.method} {response.request.url.path} answered "
            f"{response.status_code}: {response.text[:300]}"
        )


async def wait_all_executed(
    status: Callable[[str], Awaitable[str]],
    request_ids: Sequence[str],
    concurrency: int,
    on_executed: Callable[[str], None] | None = None,
) -> None:
    """Poll every request until it is `executed`; fail on any other final status."""
    progress = Progress("executed", len(request_ids))
    waiting = list(request_ids)
    deadline = time.monotonic() + 120 + 0.5 * len(request_ids)
    while waiting:
        statuses = await bounded(concurrency, [partial(status, r) for r in waiting])
        failed = {s for s in statuses if s not in ("pending", "approved", "executed")}
        if failed:
            raise RuntimeError(f"requests ended {', '.join(sorted(failed))}, not executed")
        still = []
        for request_id, state in zip(waiting, statuses, strict=True):
            if state != "executed":
                still.append(request_id)
            elif on_executed is not None:
                on_executed(request_id)
        progress.tick(len(waiting) - len(still))
        waiting = still
        if waiting:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(waiting)} requests not executed in time")
            await asyncio.sleep(POLL_INTERVAL)

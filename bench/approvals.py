"""Approval throughput: our whole stack end to end, against a bare Temporal baseline.

What is measured
----------------
1. **Ours.** N pending withdrawals are put in the database. The app (`create_app`, served
   by uvicorn) and one worker (`build_worker`) run in this process on one event loop, and
   are driven over real HTTP: `fin.clerk` creates each request (`POST /api/v1/requests`),
   `fin.manager` approves it (`POST /api/v1/requests/{id}/decision`; requests of 10,000 or
   more also get `fin.director`'s approval), at most C requests in flight at once. Then
   every request is polled (`GET /api/v1/requests/{id}`) until it is `executed`.

   - `approvals_throughput`: N divided by the time from the first create to the moment
     the last request was seen `executed` (end to end, so it includes the payout).
   - `create_p50/p95`, `approve_p50/p95`: latency of one HTTP call as the client sees it.
     A create returns once the request and its first step are recorded; an approval
     returns once the decision and the request's approval are recorded (the payout runs
     after it, so it is in the throughput but not in the approval latency).
   - `worker_rss`: peak resident set size (`getrusage` maxrss) of this whole process,
     which hosts the worker, the web app and the load generator: an upper bound for the
     worker alone.

   The load generator shares this process (and its GIL) with the app and the worker, as
   the bare run below shares it with its worker, so both are measured on equal terms.

2. **Bare.** On the same Temporal server and database, a minimal workflow with the same
   shape: started with update-with-start (a no-op `submitted` update, mirroring our
   create), then one `approve` update that runs one activity inserting one row into
   `bench_bare` with psycopg, after which the workflow completes. Same N and C, called
   through the Temporal client directly (no HTTP, no auth, no policy, no audit). Its
   figures are named `bare_*`; its throughput ends when the last workflow has completed.

How to read it
--------------
The `ratio` lines divide ours by bare. `approvals_throughput_vs_bare` below 1 is the share
of raw Temporal throughput we keep once HTTP, auth, policy checks, the audit chain and the
read model are added; `approve_p95_vs_bare` above 1 is how much slower our approval call is
at the tail than one bare update. Both depend on the machine; compare runs on one machine.

Services are started in a temp dir unless `DATABASE_URL` / `TEMPORAL_ADDRESS` are set.

    python -m bench.approvals [--n 500] [--concurrency 20] [--large-share 0.0]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import math
import os
import queue
import random
import resource
import secrets
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

from temporalio import activity, workflow
from temporalio.client import Client, WithStartWorkflowOperation, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

with workflow.unsafe.imports_passed_through():
    import httpx
    import psycopg
    import uvicorn

    from api.app import build_runtime, create_app
    from core.db import make_engine, make_session_factory, normalize_url, transaction
    from core.embedded import TemporalDevServer, embedded_postgres
    from core.migrate import upgrade
    from core.models import Payment, Player
    from core.runtime import Runtime
    from core.seed import DEMO_PASSWORD, seed_users
    from core.settings import Settings
    from core.temporal import build_worker

HOST = "127.0.0.1"
LARGE_AMOUNT = Decimal("10000")
CALL_TIMEOUT = 60.0
POLL_INTERVAL = 0.05
ACTIVITY_THREADS = 16  # as build_worker's default


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


@dataclass
class RunResult:
    throughput: float  # requests per second, created -> done
    creates: Latencies
    updates: Latencies


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


def start_services(tmp: Path, stack: ExitStack) -> Services:
    database_url = os.environ.get("DATABASE_URL")
    if not database_url:
        log("starting embedded PostgreSQL")
        database_url = stack.enter_context(embedded_postgres(tmp / "pgdata"))
    temporal_address = os.environ.get("TEMPORAL_ADDRESS")
    if not temporal_address:
        log("starting the Temporal dev server")
        temporal_address = start_temporal(tmp, stack)
    return Services(database_url, temporal_address)


def log(message: str) -> None:
    print(f"bench.approvals: {message}", file=sys.stderr, flush=True)


# --- data -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Withdrawal:
    payment_id: str
    large: bool


def withdrawal_amounts(n: int, large_share: float, rng: random.Random) -> list[Decimal]:
    large = set(rng.sample(range(n), round(n * large_share)))
    cents = [
        rng.randint(1_000_000, 6_000_000) if i in large else rng.randint(5_000, 990_000)
        for i in range(n)
    ]
    return [Decimal(c) / 100 for c in cents]


def prepare_database(url: str, n: int, large_share: float) -> list[Withdrawal]:
    """Migrate, create the demo users, and add N pending withdrawals of one new player."""
    upgrade(url)
    engine = make_engine(url, pool_size=1)
    run = secrets.token_hex(4).upper()
    player_id = f"PLR-B{run}"
    amounts = withdrawal_amounts(n, large_share, random.Random(7))
    try:
        with transaction(make_session_factory(engine)) as session:
            seed_users(session)
            session.add(
                Player(
                    id=player_id,
                    username=f"bench-{run}",
                    region="UK",
                    segment="regular",
                    vip_tier="none",
                    status="active",
                )
            )
            session.flush()
            session.add_all(
                Payment(
                    id=f"PAY-B{run}-{i:06d}",
                    player_id=player_id,
                    kind="withdrawal",
                    amount=amount,
                    currency="EUR",
                    method="bank_transfer",
                    status="pending",
                )
                for i, amount in enumerate(amounts)
            )
    finally:
        engine.dispose()
    return [
        Withdrawal(f"PAY-B{run}-{i:06d}", amount >= LARGE_AMOUNT)
        for i, amount in enumerate(amounts)
    ]


# --- ours: the app over HTTP ------------------------------------------------------------


def bench_settings() -> Settings:
    return Settings(
        BACKOFFICE_ENV="production",
        SECRET_KEY=secrets.token_urlsafe(48),
        AUDIT_SIGNING_KEY=secrets.token_urlsafe(48),
        TEMPORAL_TASK_QUEUE=f"bench-{uuid.uuid4()}",
    )


def listening_socket() -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, 0))
    return sock


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


@dataclass
class ApiDriver:
    """Creates and approves requests over HTTP, timing every call."""

    http: httpx.AsyncClient
    clerk: dict[str, str]
    manager: dict[str, str]
    director: dict[str, str]
    creates: Latencies = field(default_factory=Latencies)
    approves: Latencies = field(default_factory=Latencies)

    async def create_and_approve(self, withdrawal: Withdrawal, progress: Progress) -> str:
        body = {
            "action": "payment.withdrawal",
            "target": withdrawal.payment_id,
            "params": {},
            "reason": "benchmark",
        }
        created = await self.creates.time(
            self.http.post("/api/v1/requests", json=body, headers=self.clerk)
        )
        expect(created, 201)
        request_id: str = created.json()["id"]
        approvers = [self.manager, self.director] if withdrawal.large else [self.manager]
        for headers in approvers:
            decided = await self.approves.time(
                self.http.post(
                    f"/api/v1/requests/{request_id}/decision",
                    json={"decision": "approve", "comment": "benchmark"},
                    headers=headers,
                )
            )
            expect(decided, 200)
        progress.tick()
        return request_id

    async def status(self, request_id: str) -> str:
        response = await self.http.get(f"/api/v1/requests/{request_id}", headers=self.clerk)
        expect(response, 200)
        status: str = response.json()["status"]
        return status

    async def wait_all_executed(self, request_ids: Sequence[str], concurrency: int) -> None:
        progress = Progress("executed", len(request_ids))
        waiting = list(request_ids)
        deadline = time.monotonic() + 120 + 0.5 * len(request_ids)
        while waiting:
            statuses = await bounded(concurrency, [partial(self.status, r) for r in waiting])
            failed = {s for s in statuses if s not in ("pending", "approved", "executed")}
            if failed:
                raise RuntimeError(f"requests ended {', '.join(sorted(failed))}, not executed")
            still = [r for r, s in zip(waiting, statuses, strict=True) if s != "executed"]
            progress.tick(len(waiting) - len(still))
            waiting = still
            if waiting:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{len(waiting)} requests not executed in time")
                await asyncio.sleep(POLL_INTERVAL)


async def drive_api(
    base_url: str, withdrawals: Sequence[Withdrawal], concurrency: int
) -> RunResult:
    limits = httpx.Limits(max_connections=2 * concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=CALL_TIMEOUT, limits=limits) as http:
        driver = ApiDriver(
            http,
            clerk=await login(http, "fin.clerk"),
            manager=await login(http, "fin.manager"),
            director=await login(http, "fin.director"),
        )
        progress = Progress("approved", len(withdrawals))
        started = time.perf_counter()
        request_ids = await bounded(
            concurrency,
            [partial(driver.create_and_approve, w, progress) for w in withdrawals],
        )
        await driver.wait_all_executed(request_ids, concurrency)
        elapsed = time.perf_counter() - started
    return RunResult(len(withdrawals) / elapsed, driver.creates, driver.approves)


async def bench_ours(
    runtime: Runtime, withdrawals: Sequence[Withdrawal], concurrency: int
) -> RunResult:
    """Serve the app and run the worker on this loop, drive them over HTTP, stop both."""
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
        return await drive_api(f"http://{HOST}:{port}", withdrawals, concurrency)
    finally:
        server.should_exit = True
        await worker.shutdown()
        await asyncio.gather(server_task, worker_task, return_exceptions=True)
        sock.close()


# --- bare: the minimal workflow through the Temporal client -----------------------------


class ConnectionPool:
    """Reuses psycopg connections across activity threads (psycopg_pool is not installed)."""

    def __init__(self, url: str) -> None:
        self._url = normalize_url(url).replace("postgresql+psycopg://", "postgresql://")
        self._idle: queue.SimpleQueue[psycopg.Connection[Any]] = queue.SimpleQueue()

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        try:
            conn = self._idle.get_nowait()
        except queue.Empty:
            conn = psycopg.connect(self._url, autocommit=True)
        try:
            yield conn
        except BaseException:
            conn.close()
            raise
        self._idle.put(conn)

    def close(self) -> None:
        with contextlib.suppress(queue.Empty):
            while True:
                self._idle.get_nowait().close()


class BareActivities:
    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    @activity.defn(name="bench_bare_insert")
    def insert(self, row_id: str) -> None:
        with self._pool.connection() as conn:
            conn.execute(
                "INSERT INTO bench_bare (id) VALUES (%s) ON CONFLICT DO NOTHING", (row_id,)
            )


@workflow.defn(name="BenchBareWorkflow")
class BareWorkflow:
    @workflow.init
    def __init__(self, row_id: str) -> None:
        self._row_id = row_id
        self._approved = False

    @workflow.run
    async def run(self, row_id: str) -> str:
        await workflow.wait_condition(lambda: self._approved)
        await workflow.wait_condition(workflow.all_handlers_finished)
        return "approved"

    @workflow.update
    def submitted(self) -> str:
        return "pending"

    @workflow.update
    async def approve(self) -> str:
        await workflow.execute_activity_method(
            BareActivities.insert, self._row_id, start_to_close_timeout=timedelta(seconds=30)
        )
        self._approved = True
        return "approved"


def bare_runner() -> SandboxedWorkflowRunner:
    """The default sandbox, except that this module is not re-imported for every run.

    Re-running this whole module body (~5 ms) per workflow would charge the baseline for
    code it never uses; our workflow module re-runs in ~1 ms, which we leave to ours.
    """
    restrictions = SandboxRestrictions.default.with_passthrough_modules(BareWorkflow.__module__)
    return SandboxedWorkflowRunner(restrictions=restrictions)


def create_bare_table(pool: ConnectionPool) -> None:
    with pool.connection() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_bare (id text PRIMARY KEY)")


def drop_bare_table(pool: ConnectionPool) -> None:
    with pool.connection() as conn:
        conn.execute("DROP TABLE IF EXISTS bench_bare")


@dataclass
class BareDriver:
    client: Client
    task_queue: str
    run: str
    creates: Latencies = field(default_factory=Latencies)
    approves: Latencies = field(default_factory=Latencies)

    async def create_and_approve(self, index: int, progress: Progress) -> WorkflowHandle[Any, str]:
        row_id = f"{self.run}-{index:06d}"
        start = WithStartWorkflowOperation(
            BareWorkflow.run,
            row_id,
            id=f"bench-bare-{row_id}",
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            task_queue=self.task_queue,
        )
        await self.creates.time(
            self.client.execute_update_with_start_workflow(
                BareWorkflow.submitted, start_workflow_operation=start
            )
        )
        handle: WorkflowHandle[Any, str] = await start.workflow_handle()
        await self.approves.time(handle.execute_update(BareWorkflow.approve))
        progress.tick()
        return handle


async def bench_bare(client: Client, database_url: str, n: int, concurrency: int) -> RunResult:
    pool = ConnectionPool(database_url)
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=ACTIVITY_THREADS)
    create_bare_table(pool)
    driver = BareDriver(client, f"bench-bare-{uuid.uuid4()}", secrets.token_hex(4))
    worker = Worker(
        client,
        task_queue=driver.task_queue,
        workflows=[BareWorkflow],
        activities=[BareActivities(pool).insert],
        activity_executor=executor,
        max_concurrent_activities=ACTIVITY_THREADS,
        workflow_runner=bare_runner(),
    )
    try:
        async with worker:
            progress = Progress("bare approved", n)
            started = time.perf_counter()
            handles = await bounded(
                concurrency, [partial(driver.create_and_approve, i, progress) for i in range(n)]
            )
            await asyncio.gather(*(handle.result() for handle in handles))
            elapsed = time.perf_counter() - started
    finally:
        executor.shutdown()
        drop_bare_table(pool)
        pool.close()
    return RunResult(n / elapsed, driver.creates, driver.approves)


# --- the run ----------------------------------------------------------------------------


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def report_ours(result: RunResult) -> None:
    figure("approvals_throughput", result.throughput, "requests/s")
    figure("create_p50", result.creates.p50(), "ms")
    figure("create_p95", result.creates.p95(), "ms")
    figure("approve_p50", result.updates.p50(), "ms")
    figure("approve_p95", result.updates.p95(), "ms")
    figure("worker_rss", peak_rss_mb(), "MB")


def report_bare(ours: RunResult, bare: RunResult) -> None:
    figure("bare_throughput", bare.throughput, "workflows/s")
    figure("bare_create_p50", bare.creates.p50(), "ms")
    figure("bare_create_p95", bare.creates.p95(), "ms")
    figure("bare_update_p50", bare.updates.p50(), "ms")
    figure("bare_update_p95", bare.updates.p95(), "ms")
    ratio("approvals_throughput_vs_bare", ours.throughput, bare.throughput)
    ratio("approve_p95_vs_bare", ours.updates.p95(), bare.updates.p95())


async def run_all(services: Services, withdrawals: Sequence[Withdrawal], concurrency: int) -> None:
    runtime = await build_runtime(
        bench_settings(), services.database_url, services.temporal_address
    )
    try:
        log(f"ours: {len(withdrawals)} requests over HTTP, concurrency {concurrency}")
        ours = await bench_ours(runtime, withdrawals, concurrency)
        report_ours(ours)
        log(f"bare: {len(withdrawals)} workflows through the client, concurrency {concurrency}")
        bare = await bench_bare(
            runtime.temporal, services.database_url, len(withdrawals), concurrency
        )
        report_bare(ours, bare)
    finally:
        runtime.engine.dispose()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.approvals", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--n", type=int, default=500, help="requests to run (default 500)")
    parser.add_argument("--concurrency", type=int, default=20, help="in flight (default 20)")
    parser.add_argument(
        "--large-share",
        type=float,
        default=0.0,
        help="share of withdrawals of 10,000 or more, which need two approvals (default 0)",
    )
    args = parser.parse_args(argv)
    if args.n < 1 or args.concurrency < 1 or not 0 <= args.large_share <= 1:
        parser.error("--n and --concurrency must be positive, --large-share within 0..1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with (
        tempfile.TemporaryDirectory(prefix="bench-approvals-", ignore_cleanup_errors=True) as tmp,
        ExitStack() as stack,
    ):
        services = start_services(Path(tmp), stack)
        log(f"preparing the database: {args.n} pending withdrawals")
        withdrawals = prepare_database(services.database_url, args.n, args.large_share)
        asyncio.run(run_all(services, withdrawals, args.concurrency))
        log("stopping services")
    return 0


if __name__ == "__main__":
    # Run the importable copy, so the bare workflow is bench.approvals.BareWorkflow.
    from bench.approvals import main as run_main

    sys.exit(run_main())

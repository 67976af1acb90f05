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
import queue
import random
import secrets
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session
from temporalio import activity, workflow
from temporalio.client import Client, WithStartWorkflowOperation, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

with workflow.unsafe.imports_passed_through():
    import httpx
    import psycopg

    from api.app import build_runtime
    from bench._common import (
        Latencies,
        Progress,
        Services,
        bench_settings,
        bounded,
        expect,
        figure,
        http_client,
        logger,
        login,
        peak_rss_mb,
        plain_url,
        ratio,
        serving,
        start_services,
        wait_all_executed,
    )
    from core.db import make_engine, make_session_factory, transaction
    from core.migrate import upgrade
    from core.models import Payment, Player
    from core.runtime import Runtime
    from core.seed import seed_users

LARGE_AMOUNT = Decimal("10000")
ACTIVITY_THREADS = 16  # as build_worker's default
log = logger("approvals")


@dataclass
class RunResult:
    throughput: float  # requests per second, created -> done
    creates: Latencies
    updates: Latencies


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


def add_pending_withdrawals(session: Session, n: int, large_share: float) -> list[Withdrawal]:
    """N pending withdrawals of one new player (a share of them of 10,000 or more)."""
    run = secrets.token_hex(4).upper()
    player_id = f"PLR-B{run}"
    amounts = withdrawal_amounts(n, large_share, random.Random(7))
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
    return [
        Withdrawal(f"PAY-B{run}-{i:06d}", amount >= LARGE_AMOUNT)
        for i, amount in enumerate(amounts)
    ]


def prepare_database(url: str, n: int, large_share: float) -> list[Withdrawal]:
    """Migrate, create the demo users, and add N pending withdrawals of one new player."""
    upgrade(url)
    engine = make_engine(url, pool_size=1)
    try:
        with transaction(make_session_factory(engine)) as session:
            seed_users(session)
            return add_pending_withdrawals(session, n, large_share)
    finally:
        engine.dispose()


# --- ours: the app over HTTP ------------------------------------------------------------


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


async def drive_api(
    base_url: str, withdrawals: Sequence[Withdrawal], concurrency: int
) -> RunResult:
    async with http_client(base_url, concurrency) as http:
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
        await wait_all_executed(driver.status, request_ids, concurrency)
        elapsed = time.perf_counter() - started
    return RunResult(len(withdrawals) / elapsed, driver.creates, driver.approves)


async def bench_ours(
    runtime: Runtime, withdrawals: Sequence[Withdrawal], concurrency: int
) -> RunResult:
    """Serve the app and run the worker on this loop, drive them over HTTP, stop both."""
    async with serving(runtime) as base_url:
        return await drive_api(base_url, withdrawals, concurrency)


# --- bare: the minimal workflow through the Temporal client -----------------------------


class ConnectionPool:
    """Reuses psycopg connections across activity threads (psycopg_pool is not installed)."""

    def __init__(self, url: str) -> None:
        self._url = plain_url(url)
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
        services = start_services(Path(tmp), stack, log)
        log(f"preparing the database: {args.n} pending withdrawals")
        withdrawals = prepare_database(services.database_url, args.n, args.large_share)
        asyncio.run(run_all(services, withdrawals, args.concurrency))
        log("stopping services")
    return 0


if __name__ == "__main__":
    # Run the importable copy, so the bare workflow is bench.approvals.BareWorkflow.
    from bench.approvals import main as run_main

    sys.exit(run_main())

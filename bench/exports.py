"""CSV exports: a workspace list downloaded whole over HTTP, at growing sizes, next to a
naive export that reads every row before writing any.

What is measured
----------------
The reference platform is seeded (`seed_reference_platform`) with P players (default
200,000; `--quick` 20,000), ten payments each, and the demo users. The app (`create_app`,
served by uvicorn) and a worker run in this process on one event loop, as in
bench/approvals.py; the client signs in through the web login form (GET /login, its
hidden `csrf_token`, POST /login) and downloads, with `httpx` streaming, counting bytes and
lines as they arrive and never holding the body:

- `players_uk`: `/w/operations/players/export.csv?region=UK` as `ops.agent`
  (operations.agent: players in every region and segment), about P/8 rows;
- `players_all`: `/w/operations/players/export.csv`, all P players, same user;
- `withdrawals`: `/w/finance/payments/export.csv?status=&kind=withdrawal` as `fin.manager`
  (finance.manager: payments in every region), every withdrawal, pending or paid: a third
  of the 10*P payments, about 3.3*P rows, each a payment with its player. It is timed only
  (`--skip-payments` leaves it out): traced too, it would double the run at the default
  size; all 10*P payments would take over three minutes on their own on two cores.

After the seed the database is vacuumed and analysed, as a running platform's would be
(else autovacuum may change the plans in the middle of the run). Each export's row count
is checked against `SELECT count(*)` of the same filter; a difference fails the run (exit
1). Before the measured runs each section is exported once, untimed, as a warm-up (the
small players export; the payments list at its default filter, the 30 pending
withdrawals).

Printed per export `<e>`, from a timed download:

- `export_<e>_rows`, `export_<e>_seconds` (request sent to last byte), `export_<e>_rate`
  (rows/s), `export_<e>_throughput` (MB/s of CSV), `export_<e>_first_byte` (ms to the
  first body chunk: the filters checked, the export audited, the first ~64 KiB written);
- `export_<e>_rss_growth` (MB): this process's resident set size (`/proc/self/statm`,
  sampled every 50 ms by a thread) at its peak during the download, minus before it. The
  app, the worker and the client share the process, so it is the web process's. The
  allocator reuses what earlier downloads freed, so this says whether the process grew
  (expect well under 10 MB), not how much one export needs: that is the next figure.

Then, with `tracemalloc` tracing (which slows the process, so nothing below is timed), for
the two player exports:

- `export_<e>_heap_growth` (MB): the Python heap at its peak during a second download of
  the export, minus before it. It counts every Python allocation in the process: the
  batch of rows being written, the 64 KiB piece, the server's and the client's buffers.
- `naive_<e>_heap_growth` (MB): the same rows read with one
  `session.execute(select(...)).all()` (the same ORM entities, the same order) and written
  with `csv` and `csv_cell` into one `StringIO`. It counts the rows and the finished text,
  not the copy a response would make of it, so it is a lower bound for a materialising
  export.
- `ratio export_heap_players_all_vs_players_uk`: expect about 1 for eight times the rows:
  an export holds one batch (EXPORT_BATCH = 1000 rows) at a time. Well above 1 means
  something keeps rows (the session's identity map, a buffer) for the whole download.
- `ratio export_heap_vs_naive_<e>`: ours over naive. Expect it to fall as the rows grow
  (about eightfold from players_uk to players_all), far below 1 at the default size: the
  naive peak grows with the rows (hundreds of MB for all players), ours stays at one
  batch (a few MB). At `--quick` sizes the small export is only ~3 batches, and close.
- `peak_rss` (MB): the whole process at its peak (`getrusage`): the naive runs set it.

Rates depend on the machine (the client shares the process and its GIL with the server);
compare runs on one machine.

A throwaway database is created on the `DATABASE_URL` server (else an embedded PostgreSQL
in a temp dir is used), and dropped at the end; Temporal is the one at `TEMPORAL_ADDRESS`
or a dev server in a temp dir.

    python -m bench.exports [--players 200000] [--quick] [--skip-payments]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import gc
import io
import os
import re
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
import psycopg
from sqlalchemy import Select, func, select

from api.app import build_runtime
from bench._common import (
    Progress,
    Services,
    bench_settings,
    expect,
    figure,
    http_client,
    logger,
    peak_rss_mb,
    plain_url,
    ratio,
    serving,
    start_services,
)
from core.db import SessionFactory, make_engine, make_session_factory, transaction
from core.exports import csv_cell
from core.migrate import upgrade
from core.models import Payment, Player
from core.platform_seed import PlatformSize, seed_reference_platform
from core.repositories.platform import PaymentListRow
from core.runtime import Runtime
from core.seed import DEMO_PASSWORD, seed_users
from web.exports import COLUMNS

SMALL_REGION = "UK"
SAMPLE_INTERVAL = 0.05  # seconds between RSS samples
MB = 2**20
# Each section's export run once, untimed, before the measured ones.
WARM_UPS = (
    ("ops.agent", f"/w/operations/players/export.csv?region={SMALL_REGION}"),
    ("fin.manager", "/w/finance/payments/export.csv"),
)
CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')
log = logger("exports")


# --- the exports --------------------------------------------------------------------------


def _player(row: Any) -> Any:
    return row[0]


def _payment(row: Any) -> Any:
    return PaymentListRow(row[0], row[1])


@dataclass(frozen=True)
class Export:
    label: str
    user: str  # who downloads it
    path: str  # the export's URL, with its filters
    section: str  # its columns: web.exports.COLUMNS[section]
    # The same rows in the same order, for the count and the naive export.
    query: Callable[[], Select[*tuple[Any, ...]]]
    as_row: Callable[[Any], Any]  # a result row of `query` as the export's columns take it

    def count_query(self) -> Select[*tuple[Any, ...]]:
        return select(func.count()).select_from(self.query().order_by(None).subquery())


PLAYERS_UK = Export(
    "players_uk",
    "ops.agent",
    f"/w/operations/players/export.csv?region={SMALL_REGION}",
    "players",
    lambda: select(Player).where(Player.region == SMALL_REGION).order_by(Player.id),
    _player,
)
PLAYERS_ALL = Export(
    "players_all",
    "ops.agent",
    "/w/operations/players/export.csv",
    "players",
    lambda: select(Player).order_by(Player.id),
    _player,
)
WITHDRAWALS = Export(
    "withdrawals",
    "fin.manager",
    "/w/finance/payments/export.csv?status=&kind=withdrawal",
    "payments",
    lambda: (
        select(Payment, Player)
        .join(Player, Player.id == Payment.player_id)
        .where(Payment.kind == "withdrawal")
        .order_by(Payment.id)
    ),
    _payment,
)


# --- memory ---------------------------------------------------------------------------------


def rss_bytes() -> int:
    resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


class RssPeak:
    """The resident set size at its peak while inside, sampled by a thread, minus before."""

    def __enter__(self) -> Self:
        self.start = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def growth(self) -> int:
        return self.peak - self.start


class HeapPeak:
    """The Python heap (tracemalloc, which must be tracing) at its peak while inside, minus
    before."""

    def __enter__(self) -> Self:
        gc.collect()
        self.start = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.growth = tracemalloc.get_traced_memory()[1] - self.start


# --- downloading ----------------------------------------------------------------------------


async def web_login(http: httpx.AsyncClient, username: str) -> None:
    """Sign in through the login form; the client keeps the session cookie."""
    page = await http.get("/login")
    expect(page, 200)
    token = CSRF_FIELD.search(page.text)
    if token is None:
        raise RuntimeError("the login page has no csrf_token field")
    form = {
        "username": username,
        "password": DEMO_PASSWORD,
        "csrf_token": token.group(1),
        "next": "/tasks",
    }
    signed_in = await http.post("/login", data=form)
    if signed_in.status_code != 303 or signed_in.headers.get("location") != "/tasks":
        raise RuntimeError(
            f"signing in as {username} answered {signed_in.status_code} "
            f"to {signed_in.headers.get('location')}: {signed_in.text[:300]}"
        )


@dataclass(frozen=True)
class Download:
    rows: int
    size: int  # bytes of CSV
    seconds: float
    first_byte: float  # seconds


async def download(http: httpx.AsyncClient, path: str, label: str, expected: int) -> Download:
    """Stream the export at `path`, counting lines and bytes as they arrive."""
    progress = Progress(label, expected + 1)
    lines = size = 0
    last = b""
    first_byte: float | None = None
    started = time.perf_counter()
    async with http.stream("GET", path) as response:
        if response.status_code != 200:
            await response.aread()
            expect(response, 200)
        if not response.headers["content-type"].startswith("text/csv"):
            raise RuntimeError(f"{path} is {response.headers['content-type']}, not CSV")
        async for chunk in response.aiter_bytes():
            if first_byte is None:
                first_byte = time.perf_counter() - started
            newlines = chunk.count(b"\n")
            lines += newlines
            size += len(chunk)
            last = chunk[-1:] or last
            progress.tick(newlines)
    seconds = time.perf_counter() - started
    if last != b"\n":
        raise RuntimeError(f"{path} ended in the middle of a line")
    return Download(lines - 1, size, seconds, first_byte or seconds)  # less the header


# --- naive: every row read, then written ---------------------------------------------------


def naive_export(sessions: SessionFactory, export: Export) -> int:
    """The rows read with one query and written into one StringIO; returns the rows."""
    columns = COLUMNS[export.section]
    with sessions() as session:
        rows = session.execute(export.query()).all()
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\r\n")
        writer.writerow([spec.header for spec in columns])
        for row in rows:
            item = export.as_row(row)
            writer.writerow([csv_cell(spec.read(item)) for spec in columns])
        return len(rows)


# --- the run --------------------------------------------------------------------------------


def seed(url: str, players: int) -> None:
    upgrade(url)
    engine = make_engine(url, pool_size=1)
    try:
        with transaction(make_session_factory(engine)) as session:
            seed_users(session)
            report = seed_reference_platform(session, PlatformSize(players=players))
    finally:
        engine.dispose()
    if report is None:
        raise RuntimeError("the database already had players: the seed wrote nothing")
    log(f"seeded in {report.seconds:.1f} s: {report.rows}")
    with psycopg.connect(plain_url(url), autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE)")


def count_rows(sessions: SessionFactory, export: Export) -> int:
    with sessions() as session:
        counted: int = session.execute(export.count_query()).scalar_one()
    return counted


def report_download(export: Export, measured: Download, rss_growth: int) -> None:
    name = f"export_{export.label}"
    figure(f"{name}_rows", measured.rows, "rows")
    figure(f"{name}_seconds", measured.seconds, "s")
    figure(f"{name}_rate", measured.rows / measured.seconds, "rows/s")
    figure(f"{name}_throughput", measured.size / MB / measured.seconds, "MB/s")
    figure(f"{name}_first_byte", measured.first_byte * 1000, "ms")
    figure(f"{name}_rss_growth", rss_growth / MB, "MB")


async def timed_runs(
    clients: dict[str, httpx.AsyncClient], exports: Sequence[Export], expected: dict[str, int]
) -> bool:
    """Download each export once, timed, with the RSS sampled; True when every one held
    as many rows as its count."""
    correct = True
    for export in exports:
        log(f"timed: {export.label}")
        counted = expected[export.label]
        with RssPeak() as rss:
            measured = await download(clients[export.user], export.path, export.label, counted)
        report_download(export, measured, rss.growth)
        if measured.rows != counted:
            log(f"{export.label}: {measured.rows} rows exported, {counted} counted")
            correct = False
    return correct


async def traced_runs(
    runtime: Runtime,
    clients: dict[str, httpx.AsyncClient],
    exports: Sequence[Export],
    expected: dict[str, int],
) -> None:
    """Download each export again and run its naive twin, the heap traced; then the ratios."""
    ours: dict[str, int] = {}
    naive: dict[str, int] = {}
    tracemalloc.start()
    try:
        for export in exports:
            log(f"traced: {export.label}")
            counted = expected[export.label]
            with HeapPeak() as heap:
                await download(clients[export.user], export.path, export.label, counted)
            ours[export.label] = heap.growth
            figure(f"export_{export.label}_heap_growth", heap.growth / MB, "MB")
        for export in exports:
            log(f"naive, traced: {export.label}")
            with HeapPeak() as heap:
                rows = await asyncio.to_thread(naive_export, runtime.sessions, export)
            if rows != expected[export.label]:
                raise RuntimeError(f"the naive {export.label} read {rows} rows")
            naive[export.label] = heap.growth
            figure(f"naive_{export.label}_heap_growth", heap.growth / MB, "MB")
    finally:
        tracemalloc.stop()
    small, *larger = exports
    for export in larger:
        name = f"export_heap_{export.label}_vs_{small.label}"
        ratio(name, ours[export.label], ours[small.label])
    for export in exports:
        ratio(f"export_heap_vs_naive_{export.label}", ours[export.label], naive[export.label])


async def measure(
    runtime: Runtime, base_url: str, timed: Sequence[Export], traced: Sequence[Export]
) -> bool:
    """Sign in, count, warm up, then the timed and the traced runs; True when every export
    held as many rows as its count."""
    async with AsyncExitStack() as stack:
        clients: dict[str, httpx.AsyncClient] = {}
        for user in dict.fromkeys(export.user for export in timed):
            clients[user] = await stack.enter_async_context(http_client(base_url, 1))
            await web_login(clients[user], user)
        expected = {
            e.label: await asyncio.to_thread(count_rows, runtime.sessions, e) for e in timed
        }
        log(f"rows to export: {expected}")
        for user, path in WARM_UPS:
            if user in clients:
                log(f"warm-up: {path}")
                await download(clients[user], path, "warm-up", 1)
        correct = await timed_runs(clients, timed, expected)
        await traced_runs(runtime, clients, traced, expected)
    return correct


async def run_all(services: Services, timed: Sequence[Export], traced: Sequence[Export]) -> bool:
    runtime = await build_runtime(
        bench_settings(), services.database_url, services.temporal_address
    )
    try:
        async with serving(runtime) as base_url:
            return await measure(runtime, base_url, timed, traced)
    finally:
        runtime.engine.dispose()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.exports", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--players", type=int, default=200_000, help="players to seed (default 200,000)"
    )
    parser.add_argument("--quick", action="store_true", help="20,000 players: a smoke run")
    parser.add_argument(
        "--skip-payments",
        action="store_true",
        help="leave out the withdrawals export (about 3.3 per player)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.players = 20_000
    if args.players < 100:
        parser.error("--players must be at least 100")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    timed = [PLAYERS_UK, PLAYERS_ALL] + ([] if args.skip_payments else [WITHDRAWALS])
    with (
        tempfile.TemporaryDirectory(prefix="bench-exports-", ignore_cleanup_errors=True) as tmp,
        ExitStack() as stack,
    ):
        services = start_services(Path(tmp), stack, log, fresh_database=True)
        log(f"seeding {args.players:,} players, {10 * args.players:,} payments")
        seed(services.database_url, args.players)
        correct = asyncio.run(run_all(services, timed, [PLAYERS_UK, PLAYERS_ALL]))
        figure("peak_rss", peak_rss_mb(), "MB")
        log("stopping services")
    if not correct:
        log("an export's rows differ from the count of its filter")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

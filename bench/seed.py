"""Seed rate: the reference platform at a million players, as `backoffice seed` writes it.

What is measured
----------------
`seed_reference_platform` (core/platform_seed.py) fills an empty, migrated database with P
players (default 1,000,000), ten payments each, and the default games, markets, campaigns,
affiliates and risk rules, in one transaction, as `backoffice seed --players P` does.

- `seed_elapsed`: wall-clock seconds for the whole platform, commit included.
- `seed_players_rate`: players divided by that time (payments and the rest included, so it
  is the rate at which a usable platform of that size appears).
- `seed_rows_rate`: every row written divided by that time.
- `database_size`, `peak_rss`: the database afterwards, and this process at its peak (the
  rows are streamed into COPY, so it should not grow with P).

A throwaway database is created on the `DATABASE_URL` server (else an embedded PostgreSQL
in a temp dir is used), and dropped at the end.

    python -m bench.seed [--players 1000000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from bench._common import database_size_mb, figure, logger, peak_rss_mb, start_services
from core.db import make_engine, make_session_factory, transaction
from core.migrate import upgrade
from core.platform_seed import PlatformSize, seed_reference_platform

log = logger("seed")


def seed(url: str, players: int) -> None:
    upgrade(url)
    engine = make_engine(url, pool_size=1)
    try:
        started = time.perf_counter()
        with transaction(make_session_factory(engine)) as session:
            report = seed_reference_platform(session, PlatformSize(players=players))
        elapsed = time.perf_counter() - started
    finally:
        engine.dispose()
    if report is None:
        raise RuntimeError("the database already had players: the seed wrote nothing")
    figure("seed_elapsed", elapsed, "s")
    figure("seed_players_rate", players / elapsed, "players/s")
    figure("seed_rows_rate", sum(report.rows.values()) / elapsed, "rows/s")
    figure("database_size", database_size_mb(url), "MB")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.seed", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--players", type=int, default=1_000_000, help="players to seed (default 1,000,000)"
    )
    args = parser.parse_args(argv)
    if args.players < 1:
        parser.error("--players must be positive")
    with (
        tempfile.TemporaryDirectory(prefix="bench-seed-", ignore_cleanup_errors=True) as tmp,
        ExitStack() as stack,
    ):
        services = start_services(Path(tmp), stack, log, fresh_database=True, temporal=False)
        log(f"seeding {args.players:,} players")
        seed(services.database_url, args.players)
        figure("peak_rss", peak_rss_mb(), "MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

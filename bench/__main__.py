"""Run every benchmark in bench/, one after another, each in its own process.

    python -m bench                       # all of them (what `make bench` calls)
    python -m bench --only approvals      # one of them
    python -m bench --only approvals --n 50 --concurrency 10   # with its own options

Each benchmark is a module `bench/<name>.py` runnable as `python -m bench.<name>`. Figures
go to stdout (`<name>: <value> <unit>`, `ratio <name>: <value>`); progress to stderr. A
separate process per benchmark keeps their services and runtimes from meeting.
"""

from __future__ import annotations

import argparse
import pkgutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent


def benchmarks() -> list[str]:
    return sorted(
        info.name
        for info in pkgutil.iter_modules([str(BENCH_DIR)])
        if not info.name.startswith("_")
    )


def run(name: str, extra: Sequence[str]) -> int:
    print(f"== bench.{name} ==", file=sys.stderr, flush=True)
    return subprocess.call([sys.executable, "-m", f"bench.{name}", *extra])


def main(argv: Sequence[str] | None = None) -> int:
    names = benchmarks()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=names, help="run just this benchmark")
    args, extra = parser.parse_known_args(argv)
    if extra and not args.only:
        parser.error(f"options for one benchmark need --only: {' '.join(extra)}")
    failed = [name for name in ([args.only] if args.only else names) if run(name, extra) != 0]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

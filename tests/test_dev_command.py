"""`backoffice dev` from nothing: serves the demo, Ctrl-C leaves no process, data survives."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest


def free_port_block(size: int) -> int:
    """A port P with P..P+size-1 all free (Temporal uses its port, +1 and +2)."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + size > 65535:
            continue
        taken = False
        for port in range(base, base + size):
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    taken = True
        if not taken:
            return base
    raise RuntimeError("no free port block")


def processes_using(path: Path) -> list[str]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(path) in cmdline:
            found.append(cmdline)
    return found


def start(data_dir: Path, ports: dict[str, int]) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "TEMPORAL_ADDRESS")}
    env.update(
        BACKOFFICE_DATA_DIR=str(data_dir),
        WEB_PORT=str(ports["web"]),
        TEMPORAL_PORT=str(ports["temporal"]),
        TEMPORAL_UI_PORT=str(ports["ui"]),
    )
    return subprocess.Popen(
        [sys.executable, "-m", "core.cli", "dev", "--players", "40"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_ready(base: str, process: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read() if process.stdout else ""
            raise AssertionError(f"dev exited early:\n{output}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError("dev never became ready")


def stop(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    return output


@pytest.mark.timeout(400)
def test_dev_serves_the_demo_and_stops_cleanly(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    temporal = free_port_block(3)
    ports = {"web": free_port_block(1), "temporal": temporal, "ui": free_port_block(1)}
    base = f"http://127.0.0.1:{ports['web']}"

    first = start(data_dir, ports)
    try:
        wait_ready(base, first)
        token = httpx.post(
            f"{base}/api/v1/auth/token", json={"username": "fin.clerk", "password": "backoffice"}
        )
        assert token.status_code == 200
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        pending = httpx.get(f"{base}/api/v1/payments?status=pending&limit=200", headers=headers)
        withdrawals = pending.json()["items"]
        assert len(withdrawals) >= 20
        assert any(float(p["amount"]) >= 10000 for p in withdrawals)
        created = httpx.post(
            f"{base}/api/v1/requests",
            headers=headers,
            json={"action": "payment.withdrawal", "target": withdrawals[0]["id"], "reason": "demo"},
            timeout=30,
        )
        assert created.status_code == 201, created.text
        assert httpx.get(f"{base}/login").status_code == 200
    finally:
        output = stop(first)
    assert "fin.manager" in output and "password 'backoffice'" in output
    assert first.returncode == 0, output
    time.sleep(1)
    assert processes_using(data_dir) == []

    second = start(data_dir, ports)
    try:
        wait_ready(base, second)
        token = httpx.post(
            f"{base}/api/v1/auth/token", json={"username": "fin.clerk", "password": "backoffice"}
        )
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        mine = httpx.get(f"{base}/api/v1/requests", headers=headers).json()["items"]
        assert created.json()["id"] in [r["id"] for r in mine]
    finally:
        output = stop(second)
    assert "Seeded 0 demo users" in output
    time.sleep(1)
    assert processes_using(data_dir) == []


async def test_the_web_server_believes_forwarded_addresses_from_trusted_proxies_only():
    """Behind a load balancer the client's own address (not the proxy's) is what sign-in
    and credential throttles count; a client cannot claim another address itself."""
    from core.cli import web_server_config
    from core.settings import Settings

    seen: list[object] = []

    async def app(scope, receive, send):
        seen.append(scope["client"][0])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    config = web_server_config(Settings(BACKOFFICE_ENV="dev", TRUSTED_PROXIES="10.0.0.5"), app)
    config.load()

    async def call_from(client: str) -> None:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/",
            "raw_path": b"/",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"x-forwarded-for", b"198.51.100.7")],
            "client": (client, 5000),
            "server": ("127.0.0.1", 8000),
        }

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            return None

        await config.loaded_app(scope, receive, send)

    await call_from("10.0.0.5")
    await call_from("192.0.2.9")
    assert seen == ["198.51.100.7", "192.0.2.9"]

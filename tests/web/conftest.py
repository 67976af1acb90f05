"""Browser fixtures: the real app served by uvicorn on the session loop, and Debian's Chromium.

Playwright never downloads a browser here: it drives /usr/bin/chromium. Each test gets a
fresh browser context (no cookies shared between tests) and leaves a screenshot of its
last page in test-artifacts/ for people to look at.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from playwright.async_api import Browser, Page, async_playwright
from temporalio.worker import Worker

from api.app import create_app
from core.runtime import Runtime

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def _listening_socket() -> socket.socket:
    """A socket bound to a free port, handed to uvicorn so no other process can take it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.contextmanager
def _leave_signals_alone() -> Iterator[None]:
    yield


@pytest.fixture(scope="session")
async def live_server(runtime: Runtime, worker: Worker) -> AsyncIterator[str]:
    """The app over real HTTP (SSE and all), on the suite's event loop; yields its base URL."""
    sock = _listening_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        create_app(runtime),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    # serve() would take over SIGINT/SIGTERM for the whole pytest process (we run in the
    # main thread); a Ctrl-C must still stop the test run, not just this server.
    server.capture_signals = _leave_signals_alone  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    base_url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=2) as client:
            for _ in range(200):
                if task.done():
                    task.result()  # raises what stopped the server
                    raise RuntimeError("uvicorn stopped before serving")
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get("/healthz")).status_code == 200:
                        break
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError(f"{base_url}/healthz never answered")
        yield base_url
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=30)
        sock.close()


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield launched
        finally:
            await launched.close()


def _artifact(request: pytest.FixtureRequest, label: str = "") -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    return ARTIFACTS / (f"{name}--{label}.png" if label else f"{name}.png")


@pytest.fixture
async def page(
    browser: Browser, live_server: str, request: pytest.FixtureRequest
) -> AsyncIterator[Page]:
    """A page in its own context (own cookies), based at the live server."""
    context = await browser.new_context(
        base_url=live_server, viewport={"width": 1280, "height": 900}
    )
    context.set_default_timeout(10_000)
    opened = await context.new_page()
    try:
        yield opened
    finally:
        with contextlib.suppress(Exception):
            await opened.screenshot(path=str(_artifact(request)), full_page=True)
        await context.close()


@pytest.fixture
def snap(page: Page, request: pytest.FixtureRequest) -> Callable[[str], Awaitable[None]]:
    """`await snap("label")`: a screenshot of an intermediate state, next to the final one."""

    async def take(label: str) -> None:
        await page.screenshot(path=str(_artifact(request, label)), full_page=True)

    return take

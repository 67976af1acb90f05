"""The reference platform generator: deterministic, complete, demo-ready, fast."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal

import psycopg
import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from core.db import make_engine, make_session_factory, transaction
from core.migrate import upgrade
from core.models import Game, Market, Payment, Player
from core.platform_seed import PENDING_WITHDRAWALS, PlatformSize, seed_reference_platform

SMALL = PlatformSize(players=300, games=12, markets=9, transactions_per_player=3, campaigns=3)


@contextmanager
def migrated_database(database_url: str) -> Iterator[str]:
    """A migrated database of its own on the suite's server, dropped afterwards."""
    name = f"seed_{secrets.token_hex(4)}"
    admin = make_url(database_url).set(drivername="postgresql", database="postgres")
    admin_dsn = admin.render_as_string(hide_password=False)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_url(database_url).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade(url)
        yield url
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def empty_database(database_url: str) -> Iterator[str]:
    with migrated_database(database_url) as url:
        yield url


def snapshot(url: str) -> tuple[list[tuple[str, str, str]], list[tuple[str, Decimal]]]:
    engine = make_engine(url, pool_size=1)
    try:
        with make_session_factory(engine)() as session:
            players = [
                (p.id, p.region, p.vip_tier)
                for p in session.execute(select(Player).order_by(Player.id)).scalars()
            ]
            payments = [
                (p.id, p.amount)
                for p in session.execute(select(Payment).order_by(Payment.id).limit(200)).scalars()
            ]
        return players, payments
    finally:
        engine.dispose()


def seed(url: str, size: PlatformSize = SMALL):
    engine = make_engine(url, pool_size=1)
    try:
        with transaction(make_session_factory(engine)) as session:
            return seed_reference_platform(session, size)
    finally:
        engine.dispose()


def test_seed_fills_every_table_with_the_demo_essentials(empty_database):
    report = seed(empty_database)
    assert report is not None
    assert report.rows["players"] == 300 and report.rows["payments"] == 900
    assert report.rows["games"] == 12 and report.rows["markets"] == 9
    assert report.rows["risk_rules"] >= 5 and report.players_per_second > 0
    engine = make_engine(empty_database, pool_size=1)
    with make_session_factory(engine)() as session:
        pending = list(
            session.execute(
                select(Payment.amount).where(
                    Payment.status == "pending", Payment.kind == "withdrawal"
                )
            ).scalars()
        )
        assert len(pending) == PENDING_WITHDRAWALS >= 20
        assert sum(1 for amount in pending if amount >= 10_000) >= 5
        assert (
            session.execute(
                select(func.count()).select_from(Game).where(Game.rtp > 90)
            ).scalar_one()
            == 12
        )
        market = session.execute(select(Market).limit(1)).scalar_one()
        assert market.odds and all(Decimal(v) > 1 for v in market.odds.values())
    engine.dispose()
    assert seed(empty_database) is None  # a second run leaves the data alone


def test_same_seed_same_platform(empty_database, database_url):
    seed(empty_database)
    with migrated_database(database_url) as other:
        seed(other)
        assert snapshot(other) == snapshot(empty_database)

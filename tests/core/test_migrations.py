"""The migrations build exactly the schema the models describe (no create_all anywhere)."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine

from core import models
from core.db import Base


def test_migrated_schema_matches_the_models(engine: Engine) -> None:
    assert models.Delegation.__tablename__ in Base.metadata.tables
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == [], "a model change has no migration (or the reverse)"

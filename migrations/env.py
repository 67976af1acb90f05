"""Alembic environment: the URL is handed in by core.migrate, never read from a file."""

from alembic import context
from sqlalchemy import create_engine, pool

import core.models  # noqa: F401  (registers every table on Base.metadata)
from core.db import Base, normalize_url

config = context.config
url = normalize_url(config.get_main_option("sqlalchemy.url") or "")

if context.is_offline_mode():
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=Base.metadata)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()

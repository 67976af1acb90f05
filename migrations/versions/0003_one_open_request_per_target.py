"""one open request per target

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 09:10:00

Two submissions for the same target can both pass the API's read-model check before either
is recorded; this index makes the database the arbiter, so the second one is refused.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "uq_requests_open_target",
        "requests",
        ["action", "target"],
        unique=True,
        postgresql_where=sa.text("status IN ('pending', 'approved')"),
    )


def downgrade() -> None:
    op.drop_index("uq_requests_open_target", table_name="requests")

"""everyone's requests, newest first, from an index

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-25 14:00:00

bench/read_model.py showed the unfiltered request list (compliance) sorting the whole
table: 13 ms at 10k requests, 464 ms at 1M. Read backwards, this index serves the first
page and every keyset page after it.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_requests_created_id", "requests", ["created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_requests_created_id", table_name="requests")

"""platform changes ledger; decisions made under a delegation

Revision ID: 0004b
Revises: 0004
Create Date: 2026-11-24 10:05:00

Each approved action the built-in platform applies (and each automatic revert) is written
here in the same transaction as the change, keyed by request and phase: a retried
activity finds its earlier result instead of applying the change twice.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004b"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "platform_changes",
        sa.Column("request_id", sa.UUID(), nullable=False),
        sa.Column("phase", sa.String(length=8), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target", sa.String(length=64), nullable=False),
        sa.Column("before", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("after", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("request_id", "phase", name=op.f("pk_platform_changes")),
    )
    op.create_index("ix_platform_changes_target", "platform_changes", ["action", "target"])
    op.add_column(
        "decisions",
        sa.Column(
            "on_behalf_of_id",
            sa.Integer(),
            sa.ForeignKey("users.id", name="fk_decisions_on_behalf_of_id_users"),
            nullable=True,
        ),
    )


def downgrade() -> None:
    op.drop_column("decisions", "on_behalf_of_id")
    op.drop_table("platform_changes")

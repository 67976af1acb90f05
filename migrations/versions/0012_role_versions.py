"""role definitions changed in the app, versioned

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-25 14:10:00

policies/roles.yaml stays the default. Each approved role change adds a row here: the
full definition of one role as it is from then on, who proposed it and the request that
approved it. The effective policy is the file with, for each role, its latest row. The
id is also the counter a running process compares to know it must reload.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "role_versions",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("role", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("definition", postgresql.JSONB(), nullable=False),
        sa.Column(
            "proposed_by",
            sa.Integer(),
            sa.ForeignKey("users.id", name="fk_role_versions_proposed_by_users"),
            nullable=False,
        ),
        sa.Column("request_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("activated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("role", "version", name="uq_role_versions_role_version"),
        sa.UniqueConstraint("request_id", name="uq_role_versions_request_id"),
        sa.CheckConstraint("version >= 1", name="ck_role_versions_version"),
    )


def downgrade() -> None:
    op.drop_table("role_versions")

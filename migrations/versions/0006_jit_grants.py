"""just-in-time role grants

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25 13:30:00

A grant is asked for (pending), approved through its request's chain (active from the
approval, until expires_at), renewed by later approvals, and ends expired or revoked.
At most one open (pending or active) grant per person and role.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "jit_grants",
        sa.Column("id", postgresql.UUID(as_uuid=True), primary_key=True),
        sa.Column(
            "user_id",
            sa.Integer(),
            sa.ForeignKey("users.id", name="fk_jit_grants_user_id_users", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("role", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("granted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "revoked_by",
            sa.Integer(),
            sa.ForeignKey("users.id", name="fk_jit_grants_revoked_by_users"),
            nullable=True,
        ),
        sa.Column(
            "request_ids",
            postgresql.ARRAY(postgresql.UUID(as_uuid=True)),
            nullable=False,
        ),
        sa.Column("pending_request_id", postgresql.UUID(as_uuid=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'active', 'expired', 'revoked', 'not_granted')",
            name="ck_jit_grants_status",
        ),
        sa.CheckConstraint(
            "status = 'pending' OR status = 'not_granted' OR expires_at > granted_at",
            name="ck_jit_grants_period",
        ),
    )
    op.create_index("ix_jit_grants_user_status", "jit_grants", ["user_id", "status"])
    op.create_index("ix_jit_grants_status_expires", "jit_grants", ["status", "expires_at"])
    op.create_index(
        "uq_jit_grants_open_role",
        "jit_grants",
        ["user_id", "role"],
        unique=True,
        postgresql_where=sa.text("status IN ('pending', 'active')"),
    )


def downgrade() -> None:
    op.drop_table("jit_grants")

"""teams, task claims, delegations, self-reverting changes

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 09:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("users", sa.Column("team", sa.String(length=64), nullable=True))
    op.create_index("ix_users_team", "users", ["team"])
    op.add_column(
        "tasks",
        sa.Column(
            "claimed_by_id",
            sa.Integer(),
            sa.ForeignKey("users.id", name="fk_tasks_claimed_by_id_users"),
            nullable=True,
        ),
    )
    op.add_column("tasks", sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("requests", sa.Column("revert_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("requests", sa.Column("reverted_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "delegations",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("delegator_id", sa.Integer(), nullable=False),
        sa.Column("delegate_id", sa.Integer(), nullable=False),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("ends_at > starts_at", name=op.f("ck_delegations_period")),
        sa.CheckConstraint("delegate_id <> delegator_id", name=op.f("ck_delegations_peer")),
        sa.ForeignKeyConstraint(
            ["delegator_id"], ["users.id"], name=op.f("fk_delegations_delegator_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["delegate_id"], ["users.id"], name=op.f("fk_delegations_delegate_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_delegations")),
    )
    op.create_index("ix_delegations_delegate_ends", "delegations", ["delegate_id", "ends_at"])
    op.create_index("ix_delegations_delegator_ends", "delegations", ["delegator_id", "ends_at"])


def downgrade() -> None:
    op.drop_table("delegations")
    op.drop_column("requests", "reverted_at")
    op.drop_column("requests", "revert_at")
    op.drop_column("tasks", "claimed_at")
    op.drop_column("tasks", "claimed_by_id")
    op.drop_index("ix_users_team", table_name="users")
    op.drop_column("users", "team")

"""session limits, MFA and login throttling

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25 13:30:00

Users gain a TOTP secret (encrypted) and its state; browser sessions gain a public id, a
stage (password accepted but code pending, or MFA enrolment required), the time they were
last used (idle timeout) and why they were revoked; failed sign-ins are kept in
login_attempts, from which username lockout and per-IP throttling are computed.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("users", sa.Column("mfa_secret", sa.Text(), nullable=True))
    op.add_column("users", sa.Column("mfa_enabled_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("users", sa.Column("mfa_last_step", sa.BigInteger(), nullable=True))
    op.add_column("users", sa.Column("mfa_verified_at", sa.DateTime(timezone=True), nullable=True))

    op.add_column(
        "web_sessions",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
    )
    op.create_unique_constraint(op.f("uq_web_sessions_id"), "web_sessions", ["id"])
    op.add_column(
        "web_sessions",
        sa.Column(
            "stage", sa.String(length=16), server_default=sa.text("'active'"), nullable=False
        ),
    )
    op.add_column(
        "web_sessions",
        sa.Column(
            "last_seen_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
    )
    op.add_column("web_sessions", sa.Column("revoked_reason", sa.String(length=32), nullable=True))

    op.create_table(
        "login_attempts",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("ip", sa.String(length=64), nullable=True),
        sa.Column("reason", sa.String(length=16), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cleared_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_login_attempts")),
    )
    op.create_index(
        "ix_login_attempts_username_occurred", "login_attempts", ["username", "occurred_at"]
    )
    op.create_index("ix_login_attempts_ip_occurred", "login_attempts", ["ip", "occurred_at"])


def downgrade() -> None:
    op.drop_index("ix_login_attempts_ip_occurred", table_name="login_attempts")
    op.drop_index("ix_login_attempts_username_occurred", table_name="login_attempts")
    op.drop_table("login_attempts")
    op.drop_column("web_sessions", "revoked_reason")
    op.drop_column("web_sessions", "last_seen_at")
    op.drop_column("web_sessions", "stage")
    op.drop_constraint(op.f("uq_web_sessions_id"), "web_sessions", type_="unique")
    op.drop_column("web_sessions", "id")
    op.drop_column("users", "mfa_verified_at")
    op.drop_column("users", "mfa_last_step")
    op.drop_column("users", "mfa_enabled_at")
    op.drop_column("users", "mfa_secret")

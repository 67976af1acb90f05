"""failed sign-ins counted per address block (an IPv6 address's /64)

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-08 01:30:00

A host on an IPv6 network can take a new address for every guess; the per-address
sign-in throttle counts the /64 instead. Failures already kept count per exact address
(they age out within the throttle's window).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("login_attempts", sa.Column("ip_block", sa.String(64), nullable=True))
    op.execute("UPDATE login_attempts SET ip_block = ip")
    op.drop_index("ix_login_attempts_ip_occurred", table_name="login_attempts")
    op.create_index(
        "ix_login_attempts_ip_block_occurred", "login_attempts", ["ip_block", "occurred_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_login_attempts_ip_block_occurred", table_name="login_attempts")
    op.create_index("ix_login_attempts_ip_occurred", "login_attempts", ["ip", "occurred_at"])
    op.drop_column("login_attempts", "ip_block")

"""players referred by an affiliate

Revision ID: 0005
Revises: 0004b
Create Date: 2026-11-25 12:00:00

Affiliate commissions are computed from the payments of the players each affiliate
referred; a player without an affiliate came directly.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004b"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "players",
        sa.Column(
            "affiliate_id",
            sa.String(length=32),
            sa.ForeignKey("affiliates.id", name="fk_players_affiliate_id_affiliates"),
            nullable=True,
        ),
    )
    op.create_index("ix_players_affiliate_id", "players", ["affiliate_id"])


def downgrade() -> None:
    op.drop_index("ix_players_affiliate_id", table_name="players")
    op.drop_column("players", "affiliate_id")

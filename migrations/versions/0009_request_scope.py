"""the player region and segment of each request

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-25 14:00:00

Lists of requests and tasks narrow by the viewer's data scope in SQL, so each request keeps
the region and segment of the player its target belongs to (the player itself, or the
payment's player). Requests already recorded take them from their target now.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("requests", sa.Column("region", sa.String(length=8), nullable=True))
    op.add_column("requests", sa.Column("segment", sa.String(length=32), nullable=True))
    op.execute(
        """
        UPDATE requests SET region = players.region, segment = players.segment
        FROM players
        WHERE requests.action LIKE 'player.%' AND players.id = requests.target
        """
    )
    op.execute(
        """
        UPDATE requests SET region = players.region, segment = players.segment
        FROM payments JOIN players ON players.id = payments.player_id
        WHERE requests.action = 'payment.withdrawal' AND payments.id = requests.target
        """
    )


def downgrade() -> None:
    op.drop_column("requests", "segment")
    op.drop_column("requests", "region")

"""when each browser session last proved its second factor

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-25 16:00:00

A high-risk approval needs a second-factor check within STEP_UP_MINUTES. That freshness
belongs to the sign-in that made the check, not to the person: a code typed in one browser
must not vouch for another session of the same person (API tokens carry the time in a
claim instead). Sessions opened before this revision have no time and ask for a code.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "web_sessions", sa.Column("mfa_verified_at", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    op.drop_column("web_sessions", "mfa_verified_at")

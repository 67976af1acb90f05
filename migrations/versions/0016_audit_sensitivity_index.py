"""audit search by sensitivity (the security events of sign-ins, MFA, keys and roles)

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-25 16:20:00

Security events are a small share of the store; listing them newest first must not walk
every newer event of every request to find them.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_audit_events_sensitivity_id", "audit_events", ["sensitivity", "id"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_audit_events_sensitivity_id", table_name="audit_events")

"""the request each audit event of a request stream is about

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-25 14:40:00

Audit searches narrow by the viewer's data scope: an event of a `request:<id>` stream is
shown only when that request's player is in scope. So each event carries the request id,
derived by PostgreSQL from the stream name as a stored generated column. Being generated,
it is filled for rows already recorded by the table rewrite of ADD COLUMN itself, which
fires no UPDATE trigger: no backfill UPDATE, so the append-only trigger stays enabled
throughout. The column is not part of an event's hash, so every chain verifies unchanged.
Streams that merely look like a request stream but do not hold a well-formed UUID get NULL
(never a cast error on append).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

REQUEST_ID_FROM_STREAM = (
    "CASE WHEN stream ~ '^request:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
    "[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$' THEN CAST(substr(stream, 9) AS uuid) END"
)


def upgrade() -> None:
    op.add_column(
        "audit_events",
        sa.Column(
            "request_id",
            postgresql.UUID(as_uuid=True),
            sa.Computed(REQUEST_ID_FROM_STREAM, persisted=True),
            nullable=True,
        ),
    )
    op.create_index("ix_audit_events_request_id", "audit_events", ["request_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_audit_events_request_id", table_name="audit_events")
    op.drop_column("audit_events", "request_id")

"""enterprise identity: where a user signs in, and their id there

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-25 14:20:00

People provisioned from single sign-on (OIDC) or the directory (LDAP) are users like any
other, but their password is not ours: `auth_source` says who vouches for them and
`external_id` is their stable id there (the OIDC issuer and subject, the LDAP DN).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "users",
        sa.Column("auth_source", sa.String(length=16), server_default="local", nullable=False),
    )
    op.add_column("users", sa.Column("external_id", sa.String(length=512), nullable=True))
    op.create_check_constraint(
        op.f("ck_users_auth_source"), "users", "auth_source IN ('local', 'oidc', 'ldap')"
    )
    op.create_unique_constraint(
        op.f("uq_users_auth_source_external_id"), "users", ["auth_source", "external_id"]
    )


def downgrade() -> None:
    op.drop_constraint(op.f("uq_users_auth_source_external_id"), "users", type_="unique")
    op.drop_constraint(op.f("ck_users_auth_source"), "users", type_="check")
    op.drop_column("users", "external_id")
    op.drop_column("users", "auth_source")

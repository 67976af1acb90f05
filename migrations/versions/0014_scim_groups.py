"""SCIM groups, stored as the identity provider sends them, and the SCIM profile of people

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-25 15:40:00

Until now a SCIM group was a group of policies/identity.yaml and its members were those
who held every role it gives. The identity provider owns its groups: it creates, renames
and deletes them and says who is in them, whether or not identity.yaml maps them to roles
yet. A person's roles are those identity.yaml gives all the stored groups they are in.

scim_user_profiles holds what a provider sends about a person that the users table has no
column for (the parts of their name, their title, their e-mail addresses).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _timestamps() -> list[sa.Column[object]]:
    return [
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
    ]


def upgrade() -> None:
    op.create_table(
        "scim_groups",
        sa.Column("id", sa.Integer(), sa.Identity(), primary_key=True),
        sa.Column("display_name", sa.String(length=256), nullable=False),
        sa.Column("external_id", sa.String(length=256), nullable=True),
        *_timestamps(),
        sa.UniqueConstraint("display_name", name="uq_scim_groups_display_name"),
    )
    op.create_table(
        "scim_group_members",
        sa.Column(
            "group_id",
            sa.Integer(),
            sa.ForeignKey(
                "scim_groups.id",
                name="fk_scim_group_members_group_id_scim_groups",
                ondelete="CASCADE",
            ),
            primary_key=True,
        ),
        sa.Column(
            "user_id",
            sa.Integer(),
            sa.ForeignKey(
                "users.id", name="fk_scim_group_members_user_id_users", ondelete="CASCADE"
            ),
            primary_key=True,
        ),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
    )
    op.create_index("ix_scim_group_members_user_id", "scim_group_members", ["user_id"])
    op.create_table(
        "scim_user_profiles",
        sa.Column(
            "user_id",
            sa.Integer(),
            sa.ForeignKey(
                "users.id", name="fk_scim_user_profiles_user_id_users", ondelete="CASCADE"
            ),
            primary_key=True,
        ),
        sa.Column("given_name", sa.String(length=128), nullable=True),
        sa.Column("family_name", sa.String(length=128), nullable=True),
        sa.Column("title", sa.String(length=128), nullable=True),
        sa.Column(
            "emails", postgresql.JSONB(), server_default=sa.text("'[]'::jsonb"), nullable=False
        ),
        *_timestamps(),
    )


def downgrade() -> None:
    op.drop_table("scim_user_profiles")
    op.drop_index("ix_scim_group_members_user_id", table_name="scim_group_members")
    op.drop_table("scim_group_members")
    op.drop_table("scim_groups")

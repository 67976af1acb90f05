"""ORM models: users and sessions, the reference platform, the approval read model, audit."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Computed,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Base

Timestamp = DateTime(timezone=True)
# Usernames (of people, and as typed at sign-in) are stored in columns of this length.
MAX_USERNAME = 64
# At most one pending or approved request per (action, target); submissions race to it.
OPEN_TARGET_CONSTRAINT = "uq_requests_open_target"


def _now_default() -> Any:
    return func.now()


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint("auth_source IN ('local', 'oidc', 'ldap')", name="auth_source"),
        UniqueConstraint("auth_source", "external_id"),
    )

    id: Mapped[int] = mapped_column(Integer, Identity(), primary_key=True)
    username: Mapped[str] = mapped_column(String(MAX_USERNAME), unique=True)
    display_name: Mapped[str] = mapped_column(String(128))
    department: Mapped[str] = mapped_column(String(32))
    # Separation of duties can require an approver from outside the requester's team.
    team: Mapped[str | None] = mapped_column(String(64), index=True)
    password_hash: Mapped[str] = mapped_column(Text)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=_now_default())
    # TOTP: the secret (encrypted with a key derived from SECRET_KEY), set at enrolment and
    # active once confirmed; the last accepted time step, so a code works only once; and when
    # a code was last checked (step-up before high-risk approvals asks for a recent one).
    mfa_secret: Mapped[str | None] = mapped_column(Text)
    mfa_enabled_at: Mapped[datetime | None] = mapped_column(Timestamp)
    mfa_last_step: Mapped[int | None] = mapped_column(BigInteger)
    mfa_verified_at: Mapped[datetime | None] = mapped_column(Timestamp)
    # Who vouches for the person: our password ("local"), single sign-on ("oidc") or the
    # directory ("ldap"); external people have no usable password here and their roles
    # come from their groups at each sign-in. external_id: the OIDC issuer|subject, the DN.
    auth_source: Mapped[str] = mapped_column(String(16), server_default="local", default="local")
    external_id: Mapped[str | None] = mapped_column(String(512))


class UserRole(Base):
    __tablename__ = "user_roles"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    role: Mapped[str] = mapped_column(String(64), primary_key=True)


class WebSession(Base):
    """A browser session. The cookie carries a random token; only its SHA-256 is stored."""

    __tablename__ = "web_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    # The id shown in pages and URLs (the token hash never leaves the server).
    id: Mapped[int] = mapped_column(BigInteger, Identity(), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(256))
    # 'active'; 'mfa' (password accepted, waiting for the code); 'enrol' (the person's role
    # requires MFA and they must set it up before anything else).
    stage: Mapped[str] = mapped_column(String(16), server_default=text("'active'"))
    # When this session last proved a second factor (sign-in code, enrolment or step-up).
    mfa_verified_at: Mapped[datetime | None] = mapped_column(Timestamp)
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=_now_default())
    last_seen_at: Mapped[datetime] = mapped_column(Timestamp, server_default=_now_default())
    expires_at: Mapped[datetime] = mapped_column(Timestamp)
    revoked_at: Mapped[datetime | None] = mapped_column(Timestamp)
    revoked_reason: Mapped[str | None] = mapped_column(String(32))


class RefreshToken(Base):
    """One issued refresh token. Rotation marks it used; reuse of a used one revokes its family."""

    __tablename__ = "refresh_tokens"

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    family_id: Mapped[str] = mapped_column(String(64), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=_now_default())
    expires_at: Mapped[datetime] = mapped_column(Timestamp)
    used_at: Mapped[datetime | None] = mapped_column(Timestamp)
    revoked_at: Mapped[datetime | None] = mapped_column(Timestamp)


class Player(Base):
    __tablename__ = "players"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    username: Mapped[str] = mapped_column(String(MAX_USERNAME), unique=True)
    region: Mapped[str] = mapped_column(String(8))
    segment: Mapped[str] = mapped_column(String(32))
    vip_tier: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="active")
    daily_deposit_limit: Mapped[Decimal | None] = mapped_column(Numeric(18, 2))
    daily_loss_limit: Mapped[Decimal | None] = mapped_column(Numeric(18, 2))
    session_limit_minutes: Mapped[int | None] = mapped_column(Integer)
    # The affiliate who referred the player (commissions are paid on their activity).
    affiliate_id: Mapped[str | None] = mapped_column(ForeignKey("affiliates.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=_now_default())


class Payment(Base):
    __tablename__ = "payments"
    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_positive"),
        Index("ix_payments_status_id", "status", "id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    player_id: Mapped[str] = mapped_column(ForeignKey("players.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    amount: Mapped[Decimal] = mapped_column(Numeric(18, 2))
    currency: Mapped[str] = mapped_column(String(3))
    method: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=_now_default())
    paid_at: Mapped[datetime | None] = mapped_column(Timestamp)
    paid_by_request: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))


class Game(Base):
    __tablename__ = "games"
    __table_args__ = (
        CheckConstraint("rtp > 0 AND rtp <= 100", name="rtp_percentage"),
        Index("ix_games_provider_id", "provider", "id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    provider: Mapped[str] = mapped_column(String(64))
    category: Mapped[str] = mapped_column(String(32))
    rtp: Mapped[Decimal] = mapped_column(Numeric(5, 2))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSONB)


class SportEvent(Base):
    __tablename__ = "sport_events"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    sport: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(160))
    starts_at: Mapped[datetime] = mapped_column(Timestamp, index=True)
    status: Mapped[str] = mapped_column(String(16))


class Market(Base):
    __tablename__ = "markets"
    __table_args__ = (Index("ix_markets_status_id", "status", "id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    event_id: Mapped[str] = mapped_column(ForeignKey("sport_events.id"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))
    odds: Mapped[dict[str, Any]] = mapped_column(JSONB)
    liability: Mapped[Decimal] = mapped_column(Numeric(18, 2))


class BonusCampaign(Base):
    __tablename__ = "bonus_campaigns"
    __table_args__ = (CheckConstraint("spend >= 0 AND budget > 0", name="money_sane"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    segment: Mapped[str] = mapped_column(String(32))
    budget: Mapped[Decimal] = mapped_column(Numeric(18, 2))
    spend: Mapped[Decimal] = mapped_column(Numeric(18, 2))
    status: Mapped[str] = mapped_column(String(16))
    starts_at: Mapped[datetime] = mapped_column(Timestamp)
    ends_at: Mapped[datetime] = mapped_column(Timestamp)


class Affiliate(Base):
    __tablename__ = "affiliates"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    plan: Mapped[str] = mapped_column(String(16))
    rate: Mapped[Decimal] = mapped_column(Numeric(5, 2))
    status: Mapped[str] = mapped_column(String(16))


class RiskRule(Base):
    __tablename__ = "risk_rules"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    description: Mapped[str] = mapped_column(Text)
    threshold: Mapped[dict[str, Any]] = mapped_column(JSONB)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)


class PlatformChange(Base):
    """A change the built-in platform applied for a request (phase 'apply' or 'revert')."""

    __tablename__ = "platform_changes"
    __table_args__ = (Index("ix_platform_changes_target", "action", "target"),)

    request_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    phase: Mapped[str] = mapped_column(String(8), primary_key=True)
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(64))
    before: Mapped[dict[str, Any]] = mapped_column(JSONB)
    after: Mapped[dict[str, Any]] = mapped_column(JSONB)
    summary: Mapped[str] = mapped_column(Text)
    applied_at: Mapped[datetime] = mapped_column(Timestamp)


class ApprovalRequest(Base):
    """Read model of one approval request; the workflow is the source of truth while in flight."""

    __tablename__ = "requests"
    __table_args__ = (
        Index("ix_requests_requester_created", "requester_id", "created_at", "id"),
        Index("ix_requests_status_created", "status", "created_at", "id"),
        # Everyone's requests, newest first (compliance): without it, a sort of the table.
        Index("ix_requests_created_id", "created_at", "id"),
        Index("ix_requests_action_target", "action", "target"),
        Index(
            OPEN_TARGET_CONSTRAINT,
            "action",
            "target",
            unique=True,
            postgresql_where=text("status IN ('pending', 'approved')"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    workflow_id: Mapped[str] = mapped_column(String(96), unique=True)
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, Any]] = mapped_column(JSONB)
    amount: Mapped[Decimal | None] = mapped_column(Numeric(18, 2))
    # The region and segment of the player the target belongs to, taken at submission so
    # lists can narrow by the viewer's data scope in SQL; None when the target is no player's.
    region: Mapped[str | None] = mapped_column(String(8))
    segment: Mapped[str | None] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text)
    requester_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    status: Mapped[str] = mapped_column(String(16))
    policy_version: Mapped[str] = mapped_column(String(64))
    chain: Mapped[dict[str, Any]] = mapped_column(JSONB)
    current_step: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    updated_at: Mapped[datetime] = mapped_column(Timestamp)
    expires_at: Mapped[datetime] = mapped_column(Timestamp)
    completed_at: Mapped[datetime | None] = mapped_column(Timestamp)
    outcome: Mapped[str | None] = mapped_column(Text)
    # A temporary change (limit override, VIP status) is undone by the workflow at revert_at.
    revert_at: Mapped[datetime | None] = mapped_column(Timestamp)
    reverted_at: Mapped[datetime | None] = mapped_column(Timestamp)


class Task(Base):
    """One step of a request's chain; an open step is a task in its approvers' queues."""

    __tablename__ = "tasks"
    __table_args__ = (
        UniqueConstraint("request_id", "step_index"),
        Index("ix_tasks_open_due", "status", "due_at", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    request_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("requests.id", ondelete="CASCADE"), index=True
    )
    step_index: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(128))
    roles: Mapped[list[str]] = mapped_column(ARRAY(String(64)))
    required_approvals: Mapped[int] = mapped_column(Integer)
    approvals: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16))
    sla_seconds: Mapped[int] = mapped_column(Integer)
    opened_at: Mapped[datetime | None] = mapped_column(Timestamp)
    due_at: Mapped[datetime | None] = mapped_column(Timestamp)
    sla_breached_at: Mapped[datetime | None] = mapped_column(Timestamp)
    closed_at: Mapped[datetime | None] = mapped_column(Timestamp)
    # Who is working on it; others still see it, marked as taken.
    claimed_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    claimed_at: Mapped[datetime | None] = mapped_column(Timestamp)


class Decision(Base):
    __tablename__ = "decisions"
    __table_args__ = (UniqueConstraint("request_id", "user_id"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    request_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("requests.id", ondelete="CASCADE"))
    step_index: Mapped[int] = mapped_column(Integer)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    # Set when the decider stood in for this person under a delegation.
    on_behalf_of_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    decision: Mapped[str] = mapped_column(String(16))
    comment: Mapped[str] = mapped_column(Text, default="")
    channel: Mapped[str] = mapped_column(String(16))
    decided_at: Mapped[datetime] = mapped_column(Timestamp)


class Delegation(Base):
    """An approver hands their approvals to a peer for a period; recorded and shown."""

    __tablename__ = "delegations"
    __table_args__ = (
        CheckConstraint("ends_at > starts_at", name="period"),
        CheckConstraint("delegate_id <> delegator_id", name="peer"),
        Index("ix_delegations_delegate_ends", "delegate_id", "ends_at"),
        Index("ix_delegations_delegator_ends", "delegator_id", "ends_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    delegator_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    delegate_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    starts_at: Mapped[datetime] = mapped_column(Timestamp)
    ends_at: Mapped[datetime] = mapped_column(Timestamp)
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    revoked_at: Mapped[datetime | None] = mapped_column(Timestamp)


class Notification(Base):
    """In-app notification for one user or for every holder of a role."""

    __tablename__ = "notifications"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    event_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    recipient_role: Mapped[str | None] = mapped_column(String(64), index=True)
    recipient_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    request_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("requests.id"))
    kind: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(Timestamp)


AUDIT_REQUEST_ID_SQL = (
    "CASE WHEN stream ~ '^request:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
    "[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$' THEN CAST(substr(stream, 9) AS uuid) END"
)


class AuditEvent(Base):
    """Append-only, hash-chained per stream. Never updated or deleted outside retention."""

    __tablename__ = "audit_events"
    __table_args__ = (
        UniqueConstraint("stream", "seq"),
        Index("ix_audit_events_actor_id", "actor", "id"),
        Index("ix_audit_events_occurred_id", "occurred_at", "id"),
        Index("ix_audit_events_sensitivity_id", "sensitivity", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    event_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), unique=True)
    stream: Mapped[str] = mapped_column(String(128))
    seq: Mapped[int] = mapped_column(BigInteger)
    occurred_at: Mapped[datetime] = mapped_column(Timestamp)
    actor: Mapped[str] = mapped_column(String(128))
    actor_type: Mapped[str] = mapped_column(String(16))
    channel: Mapped[str] = mapped_column(String(16))
    ip: Mapped[str | None] = mapped_column(String(64))
    device: Mapped[str | None] = mapped_column(String(256))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(128))
    before: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    sensitivity: Mapped[str] = mapped_column(String(16))
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    # The request a `request:<id>` stream is about, derived by PostgreSQL from the stream
    # (never written, not hashed) so audit searches can narrow by the request's data scope.
    request_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), Computed(AUDIT_REQUEST_ID_SQL, persisted=True), index=True
    )


class AuditStreamHead(Base):
    """Last sequence and hash of each stream: the row a writer locks to append."""

    __tablename__ = "audit_stream_heads"

    stream: Mapped[str] = mapped_column(String(128), primary_key=True)
    last_seq: Mapped[int] = mapped_column(BigInteger)
    last_hash: Mapped[str] = mapped_column(String(64))


class AuditCheckpoint(Base):
    """A signed digest over every stream head at one moment."""

    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    heads: Mapped[dict[str, Any]] = mapped_column(JSONB)
    digest: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(64))


class ApiKey(Base):
    """A credential for an integration (a BI system): a subset of its owner's permissions
    until it expires or is revoked. Only the SHA-256 of the secret is stored."""

    __tablename__ = "api_keys"
    __table_args__ = (
        CheckConstraint("expires_at > created_at", name="expiry"),
        Index("ix_api_keys_owner_id_id", "owner_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    # The public part of the key (`bo_<prefix>_<secret>`): how a presented key is found.
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(100))
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    created_by_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    permissions: Mapped[list[str]] = mapped_column(ARRAY(String(128)))
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=_now_default())
    expires_at: Mapped[datetime] = mapped_column(Timestamp)
    last_used_at: Mapped[datetime | None] = mapped_column(Timestamp)
    revoked_at: Mapped[datetime | None] = mapped_column(Timestamp)
    revoked_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))


class RateLimitBucket(Base):
    """The token bucket of one rate-limited subject (`user:<id>` or `key:<id>`)."""

    __tablename__ = "rate_limit_buckets"

    subject: Mapped[str] = mapped_column(String(64), primary_key=True)
    tokens: Mapped[Decimal] = mapped_column(Numeric(14, 6))
    refilled_at: Mapped[datetime] = mapped_column(Timestamp)


class LoginAttempt(Base):
    """A failed sign-in (password or code). Recent uncleared ones lock a username or an IP."""

    __tablename__ = "login_attempts"
    __table_args__ = (
        Index("ix_login_attempts_username_occurred", "username", "occurred_at"),
        Index("ix_login_attempts_ip_block_occurred", "ip_block", "occurred_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    username: Mapped[str] = mapped_column(String(MAX_USERNAME))
    ip: Mapped[str | None] = mapped_column(String(64))
    # What the per-address throttle counts: the address, or an IPv6 address's /64.
    ip_block: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(16))
    occurred_at: Mapped[datetime] = mapped_column(Timestamp)
    # Set by a successful sign-in or an administrator's unlock: no longer counts.
    cleared_at: Mapped[datetime | None] = mapped_column(Timestamp)


class JitGrant(Base):
    """A just-in-time role: asked for, active from its approval until expires_at, renewable.

    The authoriser counts it only while active and unexpired, whatever the revoking timer
    has done yet. `request_ids` are the approvals that granted and renewed it.
    """

    __tablename__ = "jit_grants"
    __table_args__ = (
        CheckConstraint(
            "status IN ('pending', 'active', 'expired', 'revoked', 'not_granted')", name="status"
        ),
        CheckConstraint(
            "status = 'pending' OR status = 'not_granted' OR expires_at > granted_at",
            name="period",
        ),
        Index("ix_jit_grants_user_status", "user_id", "status"),
        Index("ix_jit_grants_status_expires", "status", "expires_at"),
        Index(
            "uq_jit_grants_open_role",
            "user_id",
            "role",
            unique=True,
            postgresql_where=text("status IN ('pending', 'active')"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    requested_at: Mapped[datetime] = mapped_column(Timestamp)
    granted_at: Mapped[datetime | None] = mapped_column(Timestamp)
    expires_at: Mapped[datetime | None] = mapped_column(Timestamp)
    revoked_at: Mapped[datetime | None] = mapped_column(Timestamp)
    revoked_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    request_ids: Mapped[list[uuid.UUID]] = mapped_column(ARRAY(UUID(as_uuid=True)))
    # The approval (first or renewal) still being decided, if any.
    pending_request_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))


class RoleVersion(Base):
    """One approved definition of a role (the full RoleDef), in force from activated_at
    until a later version of the same role; policies/roles.yaml is version 0."""

    __tablename__ = "role_versions"
    __table_args__ = (
        UniqueConstraint("role", "version"),
        UniqueConstraint("request_id"),
        CheckConstraint("version >= 1", name="version"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    role: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    definition: Mapped[dict[str, Any]] = mapped_column(JSONB)
    proposed_by: Mapped[int] = mapped_column(ForeignKey("users.id"))
    request_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    activated_at: Mapped[datetime] = mapped_column(Timestamp)


class ScimGroup(Base):
    """A group as the identity provider provisions it over SCIM; policies/identity.yaml
    decides what roles (if any) its displayName gives."""

    __tablename__ = "scim_groups"
    __table_args__ = (UniqueConstraint("display_name"),)

    id: Mapped[int] = mapped_column(Integer, Identity(), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(256))
    external_id: Mapped[str | None] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=_now_default())
    updated_at: Mapped[datetime] = mapped_column(Timestamp, server_default=_now_default())


class ScimGroupMember(Base):
    __tablename__ = "scim_group_members"

    group_id: Mapped[int] = mapped_column(
        ForeignKey("scim_groups.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=_now_default())


class ScimUserProfile(Base):
    """What SCIM says about a person beyond the users table: name parts, title, e-mails
    (a list of {"value", "type", "primary"})."""

    __tablename__ = "scim_user_profiles"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    given_name: Mapped[str | None] = mapped_column(String(128))
    family_name: Mapped[str | None] = mapped_column(String(128))
    title: Mapped[str | None] = mapped_column(String(128))
    emails: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, server_default=text("'[]'::jsonb"))
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=_now_default())
    updated_at: Mapped[datetime] = mapped_column(Timestamp, server_default=_now_default())

"""Payments of the built-in reference platform."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.models import ApprovalRequest, Payment, Player
from core.repositories.scope import EVERY_PLAYER, PlayerScope

OPEN_REQUEST_STATUSES = ("pending", "approved")


@dataclass(frozen=True)
class PaymentRow:
    payment: Payment
    player: Player
    open_request_id: uuid.UUID | None = None


def get(session: Session, payment_id: str) -> Payment | None:
    return session.get(Payment, payment_id)


def page(
    session: Session,
    *,
    status: str | None = None,
    kind: str | None = None,
    scope: PlayerScope = EVERY_PLAYER,
    within_limit: bool = False,
    after_id: str | None = None,
    limit: int = 50,
    newest_first: bool = False,
) -> list[PaymentRow]:
    """Payments of the players in `scope`, ordered by id; keyset-paginated with `after_id`.
    `within_limit`: only amounts up to the scope's limit (those one may act on).
    `newest_first`: the latest payments instead (one page, for choosing one to act on)."""
    open_request = (
        select(ApprovalRequest.id)
        .where(
            ApprovalRequest.target == Payment.id,
            ApprovalRequest.action == "payment.withdrawal",
            ApprovalRequest.status.in_(OPEN_REQUEST_STATUSES),
        )
        .limit(1)
        .scalar_subquery()
    )
    stmt = (
        select(Payment, Player, open_request)
        .join(Player, Player.id == Payment.player_id)
        .order_by(
            *((Payment.created_at.desc(), Payment.id.desc()) if newest_first else (Payment.id,))
        )
        .limit(limit)
    )
    if status is not None:
        stmt = stmt.where(Payment.status == status)
    if kind is not None:
        stmt = stmt.where(Payment.kind == kind)
    if after_id is not None:
        stmt = stmt.where(Payment.id > after_id)
    for condition in scope.conditions():
        if condition is not None:
            stmt = stmt.where(condition)
    if within_limit and scope.max_amount is not None:
        stmt = stmt.where(Payment.amount <= scope.max_amount)
    return [
        PaymentRow(payment, player, request_id)
        for payment, player, request_id in session.execute(stmt)
    ]


def mark_paid(
    session: Session, payment_id: str, request_id: uuid.UUID, amount: Decimal, now: datetime
) -> bool:
    """Pay a pending withdrawal for this request; False if it is not pending at that amount."""
    result = session.execute(
        update(Payment)
        .where(
            Payment.id == payment_id,
            Payment.status == "pending",
            Payment.kind == "withdrawal",
            Payment.amount == amount,
        )
        .values(status="paid", paid_at=now, paid_by_request=request_id)
        .returning(Payment.id)
    )
    return result.scalar_one_or_none() is not None

"""Read access to the reference platform (payments)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from api.deps import CallerDep, RuntimeDep, SessionDep, require
from api.schemas import Page, PaymentOut
from core.repositories import payments as payments_repo
from core.repositories.scope import PlayerScope
from core.request_service import data_scope

router = APIRouter(prefix="/api/v1", tags=["platform"])

PAYMENT_STATUSES = ("pending", "paid", "declined")
PAYMENT_KINDS = ("deposit", "withdrawal")


@router.get("/payments", response_model=Page[PaymentOut])
def list_payments(
    caller: CallerDep,
    rt: RuntimeDep,
    session: SessionDep,
    status: str | None = None,
    kind: str | None = None,
    cursor: Annotated[str | None, Query(max_length=32)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
):
    """Payments of the players in the caller's data scope (regions and segments), ordered
    by id; `cursor` is the `next` of the previous page."""
    require(rt, caller.principal, "payments:view")
    if status is not None and status not in PAYMENT_STATUSES:
        raise HTTPException(422, f"status must be one of {', '.join(PAYMENT_STATUSES)}")
    if kind is not None and kind not in PAYMENT_KINDS:
        raise HTTPException(422, f"kind must be one of {', '.join(PAYMENT_KINDS)}")
    rows = payments_repo.page(
        session,
        status=status,
        kind=kind,
        scope=PlayerScope.of(data_scope(rt, caller.principal)),
        after_id=cursor,
        limit=limit + 1,
    )
    items = [
        PaymentOut(
            id=row.payment.id,
            player_id=row.player.id,
            player=row.player.username,
            region=row.player.region,
            kind=row.payment.kind,
            amount=row.payment.amount,
            currency=row.payment.currency,
            method=row.payment.method,
            status=row.payment.status,
            created_at=row.payment.created_at,
            paid_at=row.payment.paid_at,
        )
        for row in rows[:limit]
    ]
    return Page[PaymentOut](
        items=items, next=rows[limit - 1].payment.id if len(rows) > limit else None
    )

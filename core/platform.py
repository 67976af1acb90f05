"""The built-in reference platform: what an approved action does to the operator's data."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy.orm import Session

from core.repositories import payments as payments_repo
from workflows.contracts import ExecuteInput, ExecuteResult


class ActionRefused(Exception):
    """The platform refused the action for a business reason; retrying will not help."""


Executor = Callable[[Session, ExecuteInput], ExecuteResult]


def pay_withdrawal(session: Session, command: ExecuteInput) -> ExecuteResult:
    request_id = uuid.UUID(command.request_id)
    payment = payments_repo.get(session, command.target)
    if payment is None:
        raise ActionRefused(f"payment {command.target} does not exist")
    if payment.status == "paid" and payment.paid_by_request == request_id:
        # Already done by an earlier attempt of this same request: exactly once.
        return _paid_result(payment.id, payment.amount, payment.currency, "pending")
    amount = Decimal(command.params["amount"])
    if not payments_repo.mark_paid(session, payment.id, request_id, amount, datetime.now(UTC)):
        raise ActionRefused(
            f"payment {payment.id} is {payment.status} for {payment.amount} {payment.currency}; "
            f"cannot pay {amount}"
        )
    return _paid_result(payment.id, payment.amount, payment.currency, payment.status)


def _paid_result(payment_id: str, amount: Decimal, currency: str, before: str) -> ExecuteResult:
    return ExecuteResult(
        before={"id": payment_id, "status": before},
        after={"id": payment_id, "status": "paid"},
        summary=f"Paid {amount} {currency} for {payment_id}",
    )


EXECUTORS: dict[str, Executor] = {
    "payment.withdrawal": pay_withdrawal,
}


def execute(session: Session, command: ExecuteInput) -> ExecuteResult:
    executor = EXECUTORS.get(command.action)
    if executor is None:
        raise ActionRefused(f"no executor for {command.action}")
    return executor(session, command)

"""The operator's platform as approved actions reach it, behind one gateway interface.

`BuiltinPlatform` acts on the reference tables in our own database. `HttpPlatform` sends
each action as a signed JSON POST to the operator's endpoint, so a real operator plugs in:
HMAC-SHA256 over "<timestamp>.<body>", the request id as idempotency key, and retries with
backoff on network errors, 429 and 5xx (the operator must deduplicate on the key).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol

import httpx
from sqlalchemy.orm import Session

from core import platform_actions
from core.db import SessionFactory, transaction
from core.platform_actions import ActionRefused
from core.repositories import payments as payments_repo
from workflows.contracts import ExecuteInput, ExecuteResult

SIGNATURE_HEADER = "X-Backoffice-Signature"
TIMESTAMP_HEADER = "X-Backoffice-Timestamp"
IDEMPOTENCY_HEADER = "Idempotency-Key"
SIGNATURE_TOLERANCE_SECONDS = 300
MAX_RETRY_AFTER_SECONDS = 30.0


class PlatformUnavailable(Exception):
    """The platform did not give a usable answer; the same action may be retried later."""


class PlatformGateway(Protocol):
    def execute(self, command: ExecuteInput) -> ExecuteResult: ...

    def revert(self, command: ExecuteInput) -> ExecuteResult:
        """Undo a temporary change made by `execute` for the same request."""
        ...


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


class BuiltinPlatform:
    """The reference platform in our own database."""

    def __init__(self, sessions: SessionFactory) -> None:
        self._sessions = sessions

    def execute(self, command: ExecuteInput) -> ExecuteResult:
        executor = EXECUTORS.get(command.action)
        if executor is None and command.action not in platform_actions.FIELD_ACTIONS:
            raise ActionRefused(f"no executor for {command.action}")
        with transaction(self._sessions) as session:
            return (executor or platform_actions.apply)(session, command)

    def revert(self, command: ExecuteInput) -> ExecuteResult:
        if command.action not in platform_actions.FIELD_ACTIONS:
            raise ActionRefused(f"{command.action} cannot be reverted")
        with transaction(self._sessions) as session:
            return platform_actions.revert(session, command)


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"v1={digest}"


def signature_is_valid(
    secret: bytes, timestamp: str, body: bytes, signature: str, now: float | None = None
) -> bool:
    """What the operator's endpoint checks (and our tests' stand-in for it)."""
    try:
        age = abs((now if now is not None else time.time()) - int(timestamp))
    except ValueError:
        return False
    expected = sign(secret, timestamp, body)
    return age <= SIGNATURE_TOLERANCE_SECONDS and hmac.compare_digest(expected, signature)


class HttpPlatform:
    """Signed JSON POSTs to the operator's endpoint."""

    def __init__(
        self,
        url: str,
        secret: bytes,
        *,
        timeout: float = 10.0,
        attempts: int = 4,
        backoff: float = 0.5,
        client: httpx.Client | None = None,
    ) -> None:
        self._url = url
        self._secret = secret
        self._attempts = attempts
        self._backoff = backoff
        self._client = client or httpx.Client(timeout=timeout)

    def execute(self, command: ExecuteInput) -> ExecuteResult:
        return self._post(command, "apply")

    def revert(self, command: ExecuteInput) -> ExecuteResult:
        return self._post(command, "revert")

    def _post(self, command: ExecuteInput, phase: str) -> ExecuteResult:
        # The operator deduplicates on the key: an apply and its later revert differ.
        idempotency_key = (
            command.request_id if phase == "apply" else f"{command.request_id}:{phase}"
        )
        body = json.dumps(
            {
                "request_id": command.request_id,
                "phase": phase,
                "action": command.action,
                "target": command.target,
                "params": command.params,
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()
        problem, wait = "no attempt made", 0.0
        for attempt in range(self._attempts):
            if attempt:
                time.sleep(wait or self._backoff * 2 ** (attempt - 1))
            timestamp = str(int(time.time()))
            headers = {
                "Content-Type": "application/json",
                TIMESTAMP_HEADER: timestamp,
                SIGNATURE_HEADER: sign(self._secret, timestamp, body),
                IDEMPOTENCY_HEADER: idempotency_key,
            }
            try:
                response = self._client.post(self._url, content=body, headers=headers)
            except httpx.TransportError as exc:
                problem, wait = f"{type(exc).__name__}: {exc}", 0.0
                continue
            if response.status_code == 429 or response.status_code >= 500:
                problem, wait = f"HTTP {response.status_code}", _retry_after(response)
                continue
            if response.is_success:
                return _result_from(response)
            raise ActionRefused(
                f"the platform refused {command.action} {command.target}: "
                f"HTTP {response.status_code} {_detail_of(response)}"
            )
        raise PlatformUnavailable(
            f"no answer from the platform after {self._attempts} attempts: {problem}"
        )


def _retry_after(response: httpx.Response) -> float:
    value = response.headers.get("Retry-After", "")
    return min(float(value), MAX_RETRY_AFTER_SECONDS) if value.isdigit() else 0.0


def _detail_of(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text[:200]
    return str(data.get("detail", data))[:200] if isinstance(data, dict) else str(data)[:200]


def _result_from(response: httpx.Response) -> ExecuteResult:
    try:
        data: Any = response.json()
        return ExecuteResult(
            before=dict(data.get("before") or {}),
            after=dict(data.get("after") or {}),
            summary=str(data["summary"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        # It may have acted: retrying with the same idempotency key is the safe answer.
        raise PlatformUnavailable(
            f"the platform answered {response.status_code} without a usable body"
        ) from exc

"""Activities of the approval workflow: record a transition, execute the approved action."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from core import approvals, platform
from core.db import SessionFactory, transaction
from core.models import OPEN_TARGET_CONSTRAINT
from workflows.contracts import ExecuteInput, ExecuteResult, TransitionBatch

# The workflow's heartbeat timeout is a few of these.
EXECUTE_HEARTBEAT_EVERY_SECONDS = 2.0


def _constraint(error: IntegrityError) -> str | None:
    diag = getattr(error.orig, "diag", None)
    return getattr(diag, "constraint_name", None)


def _refused(batch: TransitionBatch, error: DBAPIError) -> ApplicationError:
    # The database refuses this data itself: retrying forever would wedge the request.
    kinds = ", ".join(t.kind for t in batch.transitions)
    return ApplicationError(
        f"the database refused transition {kinds}: {error.orig}",
        type="RecordRefused",
        non_retryable=True,
    )


class ApprovalActivities:
    def __init__(
        self, sessions: SessionFactory, platform_gateway: platform.PlatformGateway
    ) -> None:
        self._sessions = sessions
        self._platform = platform_gateway

    @activity.defn(name="record_transitions")
    def record_transitions(self, batch: TransitionBatch) -> int:
        """Record each transition (skipping ones already recorded); returns how many were new."""
        try:
            with transaction(self._sessions) as session:
                return sum(approvals.record_transition(session, t) for t in batch.transitions)
        except IntegrityError as refused:
            if _constraint(refused) == OPEN_TARGET_CONSTRAINT:
                raise ApplicationError(
                    "another request for this target is already open",
                    type="duplicate_request",
                    non_retryable=True,
                ) from None
            raise _refused(batch, refused) from None
        except DataError as refused:
            raise _refused(batch, refused) from None

    @activity.defn(name="execute_action")
    async def execute_action(self, command: ExecuteInput) -> ExecuteResult:
        """Run the action on the platform, heartbeating so a dead worker is noticed quickly.

        The gateway is idempotent on the request id, so the retry that follows a missed
        heartbeat changes nothing the first attempt already changed.
        """
        return await _heartbeating(self._platform.execute, command)

    @activity.defn(name="revert_action")
    async def revert_action(self, command: ExecuteInput) -> ExecuteResult:
        """Undo a temporary change when its end time comes (idempotent like execute)."""
        return await _heartbeating(self._platform.revert, command)


async def _heartbeating(
    call: Callable[[ExecuteInput], ExecuteResult], command: ExecuteInput
) -> ExecuteResult:
    attempt = asyncio.ensure_future(asyncio.to_thread(call, command))
    while True:
        done, _ = await asyncio.wait({attempt}, timeout=EXECUTE_HEARTBEAT_EVERY_SECONDS)
        if done:
            break
        activity.heartbeat()
    try:
        return attempt.result()
    except platform.ActionRefused as refused:
        raise ApplicationError(str(refused), type="ActionRefused", non_retryable=True) from None

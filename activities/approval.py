"""Activities of the approval workflow: record a transition, execute the approved action."""

from __future__ import annotations

from sqlalchemy.exc import DataError, IntegrityError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from core import approvals, platform
from core.db import SessionFactory, transaction
from workflows.contracts import ExecuteInput, ExecuteResult, TransitionBatch


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
        except (DataError, IntegrityError) as refused:
            # The database refuses this data itself: retrying forever would wedge the request.
            kinds = ", ".join(t.kind for t in batch.transitions)
            raise ApplicationError(
                f"the database refused transition {kinds}: {refused.orig}",
                type="RecordRefused",
                non_retryable=True,
            ) from None

    @activity.defn(name="execute_action")
    def execute_action(self, command: ExecuteInput) -> ExecuteResult:
        try:
            return self._platform.execute(command)
        except platform.ActionRefused as refused:
            raise ApplicationError(str(refused), type="ActionRefused", non_retryable=True) from None

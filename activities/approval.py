"""Activities of the approval workflow: record a transition, execute the approved action."""

from __future__ import annotations

from temporalio import activity
from temporalio.exceptions import ApplicationError

from core import approvals, platform
from core.db import SessionFactory, transaction
from workflows.contracts import ExecuteInput, ExecuteResult, Transition


class ApprovalActivities:
    def __init__(self, sessions: SessionFactory) -> None:
        self._sessions = sessions

    @activity.defn(name="record_transition")
    def record_transition(self, transition: Transition) -> bool:
        with transaction(self._sessions) as session:
            return approvals.record_transition(session, transition)

    @activity.defn(name="execute_action")
    def execute_action(self, command: ExecuteInput) -> ExecuteResult:
        try:
            with transaction(self._sessions) as session:
                return platform.execute(session, command)
        except platform.ActionRefused as refused:
            raise ApplicationError(str(refused), type="ActionRefused", non_retryable=True) from None

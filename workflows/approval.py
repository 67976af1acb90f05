"""ApprovalWorkflow: one sensitive action through its chain of approvers, then executed once.

Decisions and cancellation arrive as Updates. Each handler claims its place synchronously
(so two concurrent updates can never both pass separation of duties), records its audit
event through the activity, then waits until `run` has applied the consequences, so the
caller gets the request's new state in the same round trip.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.approval import ApprovalActivities
    from policies.engine import within_scope
    from policies.rules import Decision, check_approval_decision, check_cancel, deny
    from workflows.contracts import (
        APPROVED,
        CANCELLED,
        EXECUTED,
        EXPIRED,
        FAILED,
        PENDING,
        REFUSED,
        REJECTED,
        ApprovalInput,
        ApprovalState,
        CancelInput,
        DecisionInput,
        ExecuteInput,
        ExecuteResult,
        Origin,
        StepState,
        Transition,
        TransitionBatch,
    )

RECORD_TIMEOUT = timedelta(seconds=30)
RECORD_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
)
EXECUTE_TIMEOUT = timedelta(seconds=60)
# The activity heartbeats every 2 s: a worker killed mid-action is noticed within this.
EXECUTE_HEARTBEAT_TIMEOUT = timedelta(seconds=10)
EXECUTE_GIVE_UP_AFTER = timedelta(hours=1)
EXECUTE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
    non_retryable_error_types=["ActionRefused"],
)
SYSTEM = "system"


def _failure_message(err: ActivityError) -> str:
    cause = err.cause
    return str(cause.message if isinstance(cause, ApplicationError) else err)


def _refuse_if(refusal: Decision | None) -> None:
    """Refuse an Update with the rule's code as the error type (the API maps it to a status)."""
    if refusal is not None:
        raise ApplicationError(refusal.reason, type=refusal.code)


@workflow.defn(name="ApprovalWorkflow")
class ApprovalWorkflow:
    @workflow.init
    def __init__(self, request: ApprovalInput) -> None:
        self._request = request
        self._status = PENDING
        self._current = 0
        self._outcome: str | None = None
        self._steps = [
            StepState(
                index=index,
                name=spec.name,
                roles=list(spec.roles),
                required_approvals=spec.approvals,
            )
            for index, spec in enumerate(request.chain.steps)
        ]
        # Names of everyone who has claimed a decision (recorded or still being recorded).
        self._claimed: list[str] = []
        self._claimed_on_step: dict[int, int] = {}
        self._rejected_by: DecisionInput | None = None
        self._cancel: CancelInput | None = None
        self._submitted = False
        # Why the read model refused the submission (another open request for the target).
        self._submission_refused: ApplicationError | None = None
        # Handlers bump `_recorded`; `run` catches `_settled` up once it has acted on them.
        self._recorded = 0
        self._settled = 0

    # --- entry points -----------------------------------------------------------------

    @workflow.run
    async def run(self, request: ApprovalInput) -> ApprovalState:
        chain = request.chain
        expires_at = workflow.now() + timedelta(seconds=chain.expires_after_seconds)
        # Transitions that happen together are recorded together, in one transaction.
        pending = [
            self._transition(
                "submitted",
                actor=request.requester,
                origin=request.origin,
                data={
                    "action": request.action,
                    "target": request.target,
                    "params": dict(request.params),
                    "reason": request.reason,
                    "requester_id": request.requester_id,
                    "region": request.region,
                    "segment": request.segment,
                    "chain": dataclasses.asdict(chain),
                    "expires_at": expires_at.isoformat(),
                },
            )
        ]
        for step in self._steps:
            self._current = step.index
            step.status = "open"
            step.due_at = workflow.now() + timedelta(seconds=chain.steps[step.index].sla_seconds)
            pending.append(
                self._transition(
                    "step_opened", step_index=step.index, data={"due_at": step.due_at.isoformat()}
                )
            )
            if not self._submitted:
                if not await self._record_submission(pending):
                    await workflow.wait_condition(workflow.all_handlers_finished)
                    return self.state()
            else:
                await self._record_all(pending)
            self._submitted = True
            if not await self._wait_for_step(step, expires_at):
                break
            step.status = "approved"
            pending = [self._transition("step_approved", step_index=step.index)]
        else:
            self._status = APPROVED
            await self._record_all([*pending, self._transition("approved")])
            self._settle()
            await self._execute()

        self._settle()
        if self._status == EXECUTED and self._revert_at() is not None:
            await self._revert_when_due()
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self.state()

    @workflow.update
    async def submitted(self) -> ApprovalState:
        """Returns once the request and its first open step are in the read model.

        Sent with update-with-start, so the caller gets the recorded request in one call.
        """
        await workflow.wait_condition(
            lambda: self._submitted or self._submission_refused is not None
        )
        if self._submission_refused is not None:
            raise self._submission_refused
        return self.state()

    @workflow.update
    async def decide(self, decision: DecisionInput) -> ApprovalState:
        # Re-checked here: the validators of concurrent updates all run before any handler.
        _refuse_if(self._decision_refusal(decision))
        step = self._steps[self._current]
        self._claimed.append(decision.user)
        if decision.on_behalf_of is not None:
            self._claimed.append(decision.on_behalf_of)
        self._claimed_on_step[step.index] = self._claimed_on_step.get(step.index, 0) + 1
        await self._record(
            "decided",
            actor=decision.user,
            origin=decision.origin,
            step_index=step.index,
            data={
                "decision": decision.decision,
                "comment": decision.comment,
                "user_id": decision.user_id,
                **(
                    {
                        "on_behalf_of": decision.on_behalf_of,
                        "on_behalf_of_id": decision.on_behalf_of_id,
                    }
                    if decision.on_behalf_of is not None
                    else {}
                ),
            },
        )
        if decision.decision == "approve":
            step.approvers.append(decision.user)
        elif self._rejected_by is None:
            self._rejected_by = decision
        return await self._wait_until_settled()

    @decide.validator
    def _validate_decide(self, decision: DecisionInput) -> None:
        _refuse_if(self._decision_refusal(decision))

    @workflow.update
    async def cancel(self, cancel: CancelInput) -> ApprovalState:
        _refuse_if(self._cancel_refusal(cancel))
        self._cancel = cancel
        return await self._wait_until_settled()

    @cancel.validator
    def _validate_cancel(self, cancel: CancelInput) -> None:
        _refuse_if(self._cancel_refusal(cancel))

    @workflow.query
    def state(self) -> ApprovalState:
        return ApprovalState(
            request_id=self._request.request_id,
            status=self._status,
            current_step=self._current,
            steps=self._steps,
            outcome=self._outcome,
        )

    # --- rules ------------------------------------------------------------------------

    def _decision_refusal(self, decision: DecisionInput) -> Decision | None:
        if decision.decision not in ("approve", "reject"):
            return deny("bad_decision", "decision must be 'approve' or 'reject'")
        status = self._status if self._cancel is None and self._rejected_by is None else "closing"
        step = self._steps[self._current]
        spec = self._request.chain.steps[step.index]
        verdict = check_approval_decision(
            user=decision.user,
            user_roles=decision.roles,
            requester=self._request.requester,
            status=status if self._submitted else "being submitted",
            step_name=step.name,
            step_roles=step.roles,
            deciders=self._claimed,
            on_behalf_of=decision.on_behalf_of,
            same_team_as_requester=spec.outside_requester_team
            and decision.team is not None
            and decision.team == self._request.requester_team,
        )
        if not verdict:
            return verdict
        request = self._request
        if request.decisions_carry_scopes and not decision.scopes:
            return deny("missing_scope", "the decision does not say what data the decider reaches")
        for scope in decision.scopes:
            verdict = within_scope(
                scope.data_scope(),
                region=request.region,
                segment=request.segment,
                amount=request.params.get("amount") or None,
            )
            if not verdict:
                return verdict
        if (
            decision.delegation_ends_at is not None
            and workflow.now() >= decision.delegation_ends_at
        ):
            return deny(
                "delegation_expired", f"your delegation from {decision.on_behalf_of} has ended"
            )
        if self._claimed_on_step.get(step.index, 0) >= step.required_approvals:
            return deny("not_pending", f"step '{step.name}' already has its approvals")
        return None

    def _cancel_refusal(self, cancel: CancelInput) -> Decision | None:
        status = self._status if self._cancel is None else "being cancelled"
        verdict = check_cancel(user=cancel.user, requester=self._request.requester, status=status)
        return None if verdict else verdict

    # --- internals --------------------------------------------------------------------

    async def _wait_for_step(self, step: StepState, expires_at: datetime) -> bool:
        """Wait until the step is approved (True) or the request ends another way (False).

        Handlers are released (`_settle`) only once everything they caused is recorded.
        """
        while True:
            if self._cancel is not None:
                cancel = self._cancel
                await self._finish(
                    CANCELLED, "cancelled", cancel.user, cancel.origin, {"reason": cancel.reason}
                )
                return False
            if self._rejected_by is not None:
                reject = self._rejected_by
                await self._finish(
                    REJECTED, "rejected", reject.user, reject.origin, {"comment": reject.comment}
                )
                return False
            if len(step.approvers) >= step.required_approvals:
                return True
            self._settle()
            assert step.due_at is not None
            deadline = expires_at if step.sla_breached else min(step.due_at, expires_at)
            remaining = (deadline - workflow.now()).total_seconds()
            try:
                if remaining <= 0:
                    raise TimeoutError
                await workflow.wait_condition(
                    lambda: self._recorded > self._settled, timeout=remaining
                )
            except TimeoutError:
                if workflow.now() >= expires_at:
                    await self._finish(EXPIRED, "expired", SYSTEM)
                    return False
                step.sla_breached = True
                spec = self._request.chain.steps[step.index]
                await self._record(
                    "sla_breached",
                    step_index=step.index,
                    data={"due_at": step.due_at.isoformat(), "escalate_to": spec.escalate_to},
                )

    async def _record_submission(self, transitions: list[Transition]) -> bool:
        """Record the request; False if the database refused it, which ends the workflow."""
        try:
            await self._record_all(transitions)
        except ActivityError as err:
            cause = err.cause
            if not isinstance(cause, ApplicationError) or cause.non_retryable is False:
                raise
            self._status = REFUSED
            self._outcome = cause.message
            self._submission_refused = ApplicationError(cause.message, type=cause.type)
            return False
        return True

    async def _finish(
        self,
        status: str,
        kind: str,
        actor: str,
        origin: Origin | None = None,
        data: dict[str, object] | None = None,
    ) -> None:
        self._status = status
        for step in self._steps:
            if step.status in ("open", "waiting"):
                step.status = status if step.status == "open" else "cancelled"
        await self._record(kind, actor=actor, origin=origin, data=data)

    async def _execute(self) -> None:
        revert_at = self._revert_at()
        if revert_at is not None and revert_at <= workflow.now():
            self._outcome = (
                f"not applied: approved after its end time ({revert_at:%Y-%m-%d %H:%M:%S} UTC)"
            )
            self._status = FAILED
            await self._record("failed", data={"error": self._outcome})
            return
        try:
            result = await self._on_platform(ApprovalActivities.execute_action)
        except ActivityError as err:
            self._outcome = _failure_message(err)
            self._status = FAILED
            await self._record("failed", data={"error": self._outcome})
            return
        self._outcome = result.summary
        self._status = EXECUTED
        await self._record(
            "executed",
            data={
                "summary": result.summary,
                "before": result.before,
                "after": result.after,
                **({"revert_at": revert_at.isoformat()} if revert_at else {}),
            },
        )

    async def _on_platform(
        self, activity: Callable[[ApprovalActivities, ExecuteInput], Awaitable[ExecuteResult]]
    ) -> ExecuteResult:
        """Apply or revert the request's change on the platform (retried, heartbeating)."""
        request = self._request
        return await workflow.execute_activity_method(
            activity,
            ExecuteInput(request.request_id, request.action, request.target, request.params),
            start_to_close_timeout=EXECUTE_TIMEOUT,
            heartbeat_timeout=EXECUTE_HEARTBEAT_TIMEOUT,
            schedule_to_close_timeout=EXECUTE_GIVE_UP_AFTER,
            retry_policy=EXECUTE_RETRY,
        )

    def _revert_at(self) -> datetime | None:
        """When a temporary change (a param named by the chain's `reverts_with`) ends."""
        param = self._request.chain.reverts_with
        until = self._request.params.get(param) if param else None
        return datetime.fromisoformat(until) if until else None

    async def _revert_when_due(self) -> None:
        """A durable timer: the change is undone at its end time, across restarts."""
        revert_at = self._revert_at()
        assert revert_at is not None
        delay = revert_at - workflow.now()
        if delay > timedelta(0):
            await workflow.sleep(delay)
        try:
            result = await self._on_platform(ApprovalActivities.revert_action)
        except ActivityError as err:
            await self._record("revert_failed", data={"error": _failure_message(err)})
            return
        await self._record(
            "reverted",
            data={"summary": result.summary, "before": result.before, "after": result.after},
        )

    async def _wait_until_settled(self) -> ApprovalState:
        self._recorded += 1
        ticket = self._recorded
        await workflow.wait_condition(lambda: self._settled >= ticket)
        return self.state()

    def _settle(self) -> None:
        self._settled = self._recorded

    async def _record(
        self,
        kind: str,
        *,
        actor: str = SYSTEM,
        origin: Origin | None = None,
        step_index: int | None = None,
        data: dict[str, object] | None = None,
    ) -> None:
        await self._record_all(
            [self._transition(kind, actor=actor, origin=origin, step_index=step_index, data=data)]
        )

    def _transition(
        self,
        kind: str,
        *,
        actor: str = SYSTEM,
        origin: Origin | None = None,
        step_index: int | None = None,
        data: dict[str, object] | None = None,
    ) -> Transition:
        return Transition(
            event_id=str(workflow.uuid4()),
            request_id=self._request.request_id,
            kind=kind,
            actor=actor,
            actor_type="system" if actor == SYSTEM else "user",
            occurred_at=workflow.now(),
            origin=origin or Origin(channel="workflow"),
            step_index=step_index,
            data=dict(data or {}),
        )

    async def _record_all(self, transitions: list[Transition]) -> None:
        # A local activity: a short idempotent write needs no task-queue round trip.
        await workflow.execute_local_activity_method(
            ApprovalActivities.record_transitions,
            TransitionBatch(transitions),
            start_to_close_timeout=RECORD_TIMEOUT,
            retry_policy=RECORD_RETRY,
        )

"""JitAccessWorkflow: one just-in-time elevation from request to its end.

The approvals are child ApprovalWorkflows (the same chains, validators, SLA and audit as
every other request); the approved child's executor grants or extends the role, so the
clock starts at approval. This workflow then holds the durable timer that expires the
grant, starts renewal approvals, and revokes early on request. The authoriser never
trusts this timer alone: an expired grant counts for nothing even before it fires.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from activities.jit import (
        ACTIVE,
        EXPIRED,
        NOT_GRANTED,
        PENDING,
        REVOKED,
        AttachApproval,
        GrantEnd,
        JitActivities,
        JitInput,
        JitState,
        RenewInput,
        RevokeInput,
        SettleApproval,
    )
    from workflows.contracts import (
        EXECUTED,
        ApprovalInput,
        ApprovalState,
        Origin,
        approval_workflow_id,
    )

from workflows.approval import ApprovalWorkflow

A = TypeVar("A")
R = TypeVar("R")
WRITE_TIMEOUT = timedelta(seconds=30)
WRITE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
)


def _refuse(code: str, reason: str) -> None:
    raise ApplicationError(reason, type=code)


@workflow.defn(name="JitAccessWorkflow")
class JitAccessWorkflow:
    @workflow.init
    def __init__(self, grant: JitInput) -> None:
        self._grant = grant
        self._status = PENDING
        self._expires_at: datetime | None = None
        self._pending_request: str | None = None
        self._approval_started = False
        self._refused: ApplicationError | None = None
        self._revoke: RevokeInput | None = None
        self._expiry_changes = 0
        self._ended = False
        # The first approval has closed and this workflow knows what it led to.
        self._settled_first = False
        self._renewal: asyncio.Future[None] | None = None

    @workflow.run
    async def run(self, grant: JitInput) -> JitState:
        try:
            await self._write(JitActivities.record_requested, grant)
        except ActivityError as err:
            cause = err.cause
            message = cause.message if isinstance(cause, ApplicationError) else str(err)
            self._refused = ApplicationError(message, type="duplicate_request")
            self._status = NOT_GRANTED
            self._settled_first = True
            await workflow.wait_condition(workflow.all_handlers_finished)
            return self.state()
        approval = await self._start_approval(grant.approval)
        self._approval_started = True
        outcome: ApprovalState = await approval
        await self._settle(grant.approval.request_id)
        if outcome.status != EXECUTED:
            await self._end(NOT_GRANTED, reason=f"approval {outcome.status}")
            self._settled_first = True
        else:
            await self._refresh()
            self._settled_first = True
            await self._hold_until_ended()
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self.state()

    @workflow.update
    async def approval_started(self) -> JitState:
        """Returns once the first approval runs (sent with update-with-start)."""
        await workflow.wait_condition(lambda: self._approval_started or self._refused is not None)
        if self._refused is not None:
            raise self._refused
        return self.state()

    @workflow.update
    async def renew(self, renewal: RenewInput) -> JitState:
        await self._catch_up()
        self._check_renew(renewal)
        request_id = renewal.approval.request_id
        self._pending_request = request_id
        await self._write(
            JitActivities.attach_approval,
            AttachApproval(
                grant_id=self._grant.grant_id,
                request_id=request_id,
                event_id=renewal.event_id,
                actor=renewal.user,
                origin=renewal.origin,
            ),
        )
        approval = await self._start_approval(renewal.approval)
        self._renewal = asyncio.ensure_future(self._await_renewal(request_id, approval))
        return self.state()

    @renew.validator
    def _validate_renew(self, renewal: RenewInput) -> None:
        if self._settled_first:
            self._check_renew(renewal)

    @workflow.update
    async def revoke(self, revoke: RevokeInput) -> JitState:
        await self._catch_up()
        self._check_revoke()
        self._revoke = revoke
        await workflow.wait_condition(lambda: self._ended)
        return self.state()

    @revoke.validator
    def _validate_revoke(self, revoke: RevokeInput) -> None:
        if self._settled_first:
            self._check_revoke()

    @workflow.query
    def state(self) -> JitState:
        return JitState(
            grant_id=self._grant.grant_id,
            status=self._status,
            expires_at=self._expires_at,
            pending_request_id=self._pending_request,
        )

    # --- rules ------------------------------------------------------------------------

    async def _catch_up(self) -> None:
        """The grant is made by the approval's executor a moment before this workflow
        hears of it: a command that races that moment waits for it, then is checked."""
        await workflow.wait_condition(lambda: self._settled_first)

    def _in_force(self) -> bool:
        return (
            self._status == ACTIVE
            and self._revoke is None
            and self._expires_at is not None
            and workflow.now() < self._expires_at
        )

    def _check_renew(self, renewal: RenewInput) -> None:
        if renewal.user_id != self._grant.user_id:
            _refuse("forbidden", "only the holder renews an elevation")
        if not self._in_force():
            _refuse("not_pending", f"the elevation is {self._status}; only an active one renews")
        if self._pending_request is not None:
            _refuse("not_pending", f"renewal request {self._pending_request} is still open")

    def _check_revoke(self) -> None:
        if not self._in_force():
            _refuse("not_pending", f"the elevation is {self._status}; only an active one ends")

    # --- internals --------------------------------------------------------------------

    async def _hold_until_ended(self) -> None:
        """The durable timer: wait for the expiry (moved by renewals) or a revocation."""
        while True:
            assert self._expires_at is not None
            seen = self._expiry_changes
            remaining = (self._expires_at - workflow.now()).total_seconds()
            if self._revoke is None and remaining > 0:
                with contextlib.suppress(TimeoutError):
                    await workflow.wait_condition(
                        lambda seen=seen: (
                            self._revoke is not None  # type: ignore[misc]
                            or self._expiry_changes != seen
                        ),
                        timeout=remaining,
                    )
            if self._revoke is not None:
                revoke = self._revoke
                await self._end(
                    REVOKED,
                    actor=revoke.user,
                    actor_id=revoke.user_id,
                    reason=revoke.reason,
                    origin=revoke.origin,
                )
                return
            if self._expiry_changes == seen and workflow.now() >= self._expires_at:
                if await self._end(EXPIRED):
                    return
                await self._refresh()  # a renewal moved the expiry meanwhile

    async def _start_approval(
        self, approval: ApprovalInput
    ) -> workflow.ChildWorkflowHandle[ApprovalWorkflow, ApprovalState]:
        # Abandoned, not terminated, if the grant ends first: the approval then closes
        # itself (its executor refuses an ended grant) and its read model stays true.
        return await workflow.start_child_workflow(
            ApprovalWorkflow.run,
            approval,
            id=approval_workflow_id(approval.request_id),
            parent_close_policy=ParentClosePolicy.ABANDON,
        )

    async def _await_renewal(
        self,
        request_id: str,
        approval: workflow.ChildWorkflowHandle[ApprovalWorkflow, ApprovalState],
    ) -> None:
        outcome = await approval
        await self._settle(request_id)
        self._pending_request = None
        if outcome.status == EXECUTED and not self._ended:
            await self._refresh()

    async def _refresh(self) -> None:
        state: JitState = await self._write(JitActivities.grant_state, self._grant.grant_id)
        if state.expires_at != self._expires_at:
            self._expiry_changes += 1
        self._status, self._expires_at = state.status, state.expires_at

    async def _settle(self, request_id: str) -> None:
        await self._write(
            JitActivities.settle_approval, SettleApproval(self._grant.grant_id, request_id)
        )

    async def _end(
        self,
        kind: str,
        *,
        actor: str = "system",
        actor_id: int | None = None,
        reason: str = "",
        origin: Origin | None = None,
    ) -> bool:
        ended: bool = await self._write(
            JitActivities.end_grant,
            GrantEnd(
                grant_id=self._grant.grant_id,
                kind=kind,
                event_id=str(workflow.uuid4()),
                at=workflow.now(),
                actor=actor,
                actor_id=actor_id,
                reason=reason,
                origin=origin or Origin(channel="workflow"),
            ),
        )
        if ended:
            self._status = kind
            self._ended = True
        return ended

    async def _write(self, activity: Callable[[JitActivities, A], R], argument: A) -> R:
        return await workflow.execute_activity_method(
            activity,
            argument,
            start_to_close_timeout=WRITE_TIMEOUT,
            retry_policy=WRITE_RETRY,
        )

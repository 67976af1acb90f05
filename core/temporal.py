"""Temporal client and worker construction."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
)
from temporalio.worker import Worker

from activities.approval import ApprovalActivities
from activities.audit import AuditActivities
from activities.jit import JitActivities, JitGrantingPlatform
from core.db import SessionFactory
from core.platform import BuiltinPlatform, HttpPlatform, PlatformGateway
from core.role_admin import RoleChangingPlatform
from core.settings import Settings
from workflows.approval import ApprovalWorkflow
from workflows.audit_checkpoint import (
    CHECKPOINT_EVERY,
    CHECKPOINT_SCHEDULE_ID,
    AuditCheckpointWorkflow,
)
from workflows.jit import JitAccessWorkflow

WORKFLOWS: Sequence[type] = (ApprovalWorkflow, AuditCheckpointWorkflow, JitAccessWorkflow)


def build_activities(
    sessions: SessionFactory, audit_signing_key: bytes, platform_gateway: PlatformGateway
) -> list[Callable[..., Any]]:
    # Approved elevations and role changes take effect in our database, never sent to the
    # operator.
    gateway = RoleChangingPlatform(JitGrantingPlatform(platform_gateway, sessions), sessions)
    approval = ApprovalActivities(sessions, gateway)
    audit = AuditActivities(sessions, audit_signing_key)
    jit = JitActivities(sessions)
    return [
        approval.record_transitions,
        approval.execute_action,
        approval.revert_action,
        audit.write_checkpoint,
        jit.record_requested,
        jit.attach_approval,
        jit.settle_approval,
        jit.grant_state,
        jit.end_grant,
    ]


async def connect(address: str, namespace: str = "default", ready_within: float = 30) -> Client:
    """A client, once the server answers: a server just started opens its port a little
    before its frontend is healthy (it answers Unavailable until then)."""
    deadline = time.monotonic() + ready_within
    while True:
        try:
            return await Client.connect(address, namespace=namespace)
        except RuntimeError as exc:
            if "Unavailable" not in str(exc) or time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.2)


def build_worker(
    client: Client,
    sessions: SessionFactory,
    task_queue: str,
    audit_signing_key: bytes,
    *,
    platform_gateway: PlatformGateway | None = None,
    max_activity_threads: int = 16,
    fail_workflow_on_task_error: bool = False,
) -> Worker:
    """The one worker: every workflow and activity of the product on one task queue.

    `fail_workflow_on_task_error` (tests) turns a workflow task error, such as a sandbox
    violation, into a failed workflow instead of a task retried forever. Approved actions go
    to the built-in reference platform unless another gateway is given.
    """
    gateway = platform_gateway or BuiltinPlatform(sessions)
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=max_activity_threads)
    return Worker(
        client,
        task_queue=task_queue,
        workflows=list(WORKFLOWS),
        activities=build_activities(sessions, audit_signing_key, gateway),
        activity_executor=executor,
        max_concurrent_activities=max_activity_threads,
        workflow_failure_exception_types=[Exception] if fail_workflow_on_task_error else [],
    )


async def ensure_schedules(client: Client, task_queue: str) -> None:
    """Create the product's schedules if they do not exist (every worker start calls this)."""
    with contextlib.suppress(ScheduleAlreadyRunningError):
        await client.create_schedule(
            CHECKPOINT_SCHEDULE_ID,
            Schedule(
                action=ScheduleActionStartWorkflow(
                    AuditCheckpointWorkflow.run, id=CHECKPOINT_SCHEDULE_ID, task_queue=task_queue
                ),
                spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=CHECKPOINT_EVERY)]),
                policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
            ),
        )


def platform_gateway_from(settings: Settings, sessions: SessionFactory) -> PlatformGateway:
    """The operator's HTTP endpoint when PLATFORM_URL is set, else the built-in platform."""
    if settings.platform_url:
        return HttpPlatform(
            settings.platform_url,
            settings.platform_secret.get_secret_value().encode(),
            timeout=settings.platform_timeout_seconds,
        )
    return BuiltinPlatform(sessions)

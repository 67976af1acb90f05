"""Temporal client and worker construction."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Sequence

from temporalio.client import Client
from temporalio.worker import Worker

from activities.approval import build_activities
from core.db import SessionFactory
from workflows.approval import ApprovalWorkflow

WORKFLOWS: Sequence[type] = (ApprovalWorkflow,)


async def connect(address: str, namespace: str = "default") -> Client:
    return await Client.connect(address, namespace=namespace)


def build_worker(
    client: Client,
    sessions: SessionFactory,
    task_queue: str,
    *,
    max_activity_threads: int = 16,
    fail_workflow_on_task_error: bool = False,
) -> Worker:
    """The one worker: every workflow and activity of the product on one task queue.

    `fail_workflow_on_task_error` (tests) turns a workflow task error, such as a sandbox
    violation, into a failed workflow instead of a task retried forever.
    """
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=max_activity_threads)
    return Worker(
        client,
        task_queue=task_queue,
        workflows=list(WORKFLOWS),
        activities=build_activities(sessions),
        activity_executor=executor,
        max_concurrent_activities=max_activity_threads,
        workflow_failure_exception_types=[Exception] if fail_workflow_on_task_error else [],
    )

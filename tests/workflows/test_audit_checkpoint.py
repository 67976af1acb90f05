"""The scheduled audit checkpoint: signs every stream head; verify checks it."""

from __future__ import annotations

import uuid

from sqlalchemy import select

from core import audit
from core.models import AuditCheckpoint
from core.temporal import ensure_schedules
from tests.conftest import AUDIT_KEY
from workflows.audit_checkpoint import CHECKPOINT_SCHEDULE_ID, AuditCheckpointWorkflow


async def test_checkpoint_workflow_signs_the_heads(temporal_client, worker, task_queue, sessions):
    result = await temporal_client.execute_workflow(
        AuditCheckpointWorkflow.run, id=f"checkpoint-{uuid.uuid4()}", task_queue=task_queue
    )
    with sessions() as session:
        checkpoint = session.get(AuditCheckpoint, result.checkpoint_id)
        assert checkpoint is not None and len(checkpoint.heads) == result.streams > 0
        report = audit.verify(session, AUDIT_KEY)
    assert report.checkpoints >= 1
    assert not [
        p for p in report.problems if p.stream == "checkpoint" and p.seq == result.checkpoint_id
    ]


async def test_schedule_is_created_once(temporal_client, task_queue):
    await ensure_schedules(temporal_client, task_queue)
    await ensure_schedules(temporal_client, task_queue)  # a second worker start: no error
    description = await temporal_client.get_schedule_handle(CHECKPOINT_SCHEDULE_ID).describe()
    assert description.schedule.spec.intervals[0].every.total_seconds() == 3600


def test_checkpoints_are_listed_newest_last(sessions):
    with sessions() as session:
        ids = list(
            session.execute(select(AuditCheckpoint.id).order_by(AuditCheckpoint.id)).scalars()
        )
    assert ids == sorted(ids)

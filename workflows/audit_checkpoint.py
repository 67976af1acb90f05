"""AuditCheckpointWorkflow: sign a checkpoint over every audit stream head (run on a schedule)."""

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.audit import AuditActivities
    from workflows.contracts import CheckpointResult

CHECKPOINT_SCHEDULE_ID = "audit-checkpoint"
CHECKPOINT_EVERY = timedelta(hours=1)


@workflow.defn(name="AuditCheckpointWorkflow")
class AuditCheckpointWorkflow:
    @workflow.run
    async def run(self) -> CheckpointResult:
        return await workflow.execute_activity_method(
            AuditActivities.write_checkpoint,
            start_to_close_timeout=timedelta(minutes=10),
            retry_policy=RetryPolicy(maximum_interval=timedelta(minutes=1)),
        )

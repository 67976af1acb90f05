"""Activities of the audit store."""

from temporalio import activity

from core import audit
from core.db import SessionFactory, transaction
from workflows.contracts import CheckpointResult


class AuditActivities:
    def __init__(self, sessions: SessionFactory, signing_key: bytes) -> None:
        self._sessions = sessions
        self._signing_key = signing_key

    @activity.defn(name="write_audit_checkpoint")
    def write_checkpoint(self) -> CheckpointResult:
        with transaction(self._sessions) as session:
            checkpoint = audit.write_checkpoint(session, self._signing_key)
            return CheckpointResult(checkpoint.id, len(checkpoint.heads))

"""A viewer's data scope as SQL: the one place a DataScope becomes WHERE conditions.

Lists of players and of what belongs to them (payments, requests and tasks about a player
or a payment) narrow by these conditions, so a row outside the scope never leaves the
database.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import ColumnElement, and_, or_, select

from core.models import ApprovalRequest, AuditEvent, Player
from policies.snapshot import EVERY, DataScope


@dataclass(frozen=True)
class PlayerScope:
    """The players a viewer's roles reach (None in a dimension reaches every value) and the
    largest amount they may act on (None: no limit)."""

    regions: Collection[str] | None = None
    segments: Collection[str] | None = None
    max_amount: Decimal | None = None

    @classmethod
    def of(cls, scope: DataScope) -> PlayerScope:
        return cls(
            None if scope.regions == EVERY else sorted(scope.regions),
            None if scope.segments == EVERY else sorted(scope.segments),
            scope.max_amount,
        )

    @property
    def reaches_every_player(self) -> bool:
        return self.regions is None and self.segments is None

    def audit_condition(self) -> ColumnElement[bool] | None:
        """On `audit_events`: None (no narrowing) when every player is reached; else only
        events of a request stream whose request is in scope (as in lists of requests). Other
        streams (people, delegations, elevations, roles, the system) are about no player, and
        a viewer narrowed to some players does not see them."""
        if self.reaches_every_player:
            return None
        in_scope = [c for c in self.request_conditions(with_amount=False) if c is not None]
        return (
            select(ApprovalRequest.id)
            .where(ApprovalRequest.id == AuditEvent.request_id, and_(*in_scope))
            .exists()
        )

    def conditions(self) -> list[ColumnElement[bool] | None]:
        """On rows joined to `players`: the player is in scope."""
        return [
            None if self.regions is None else Player.region.in_(list(self.regions)),
            None if self.segments is None else Player.segment.in_(list(self.segments)),
        ]

    def request_conditions(self, *, with_amount: bool) -> list[ColumnElement[bool] | None]:
        """On `requests`: the request's player (stored at submission) is in scope; requests
        about no player pass. `with_amount`: also its amount is within the limit, for lists
        of things to act on (a task queue)."""
        return [
            None
            if self.regions is None
            else or_(
                ApprovalRequest.region.is_(None), ApprovalRequest.region.in_(list(self.regions))
            ),
            None
            if self.segments is None
            else or_(
                ApprovalRequest.segment.is_(None),
                ApprovalRequest.segment.in_(list(self.segments)),
            ),
            None
            if not with_amount or self.max_amount is None
            else or_(ApprovalRequest.amount.is_(None), ApprovalRequest.amount <= self.max_amount),
        ]


EVERY_PLAYER = PlayerScope()

"""Pure rules shared by every entry point and by workflow update validators."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    allowed: bool
    code: str
    reason: str

    def __bool__(self) -> bool:
        return self.allowed


ALLOW = Decision(True, "allowed", "allowed")


def deny(code: str, reason: str) -> Decision:
    return Decision(False, code, reason)


def permission_matches(granted: str, wanted: str) -> bool:
    """`payments:*` grants `payments:view`, `*:view` grants every view; `*` grants all."""
    if granted in ("*", wanted):
        return True
    resource, _, verb = granted.partition(":")
    wanted_resource, _, wanted_verb = wanted.partition(":")
    return (resource in ("*", wanted_resource)) and (verb in ("*", wanted_verb))


def check_approval_decision(
    *,
    user: str,
    user_roles: Collection[str],
    requester: str,
    status: str,
    step_name: str,
    step_roles: Collection[str],
    deciders: Collection[str],
    on_behalf_of: str | None = None,
    same_team_as_requester: bool = False,
) -> Decision:
    """May `user` (for `on_behalf_of`, under a delegation) decide the current step?

    Separation of duties: nobody decides their own request, nobody decides twice (a delegate
    and the person they stand in for count as one), and a step may exclude the requester's
    team.
    """
    if status != "pending":
        return deny("not_pending", f"the request is {status}; decisions are closed")
    if requester in (user, on_behalf_of):
        return deny("own_request", "you cannot decide on your own request")
    if user in deciders:
        return deny("already_decided", "you have already decided on this request")
    if on_behalf_of is not None and on_behalf_of in deciders:
        return deny("already_decided", f"{on_behalf_of} has already decided on this request")
    if not set(user_roles) & set(step_roles):
        return deny(
            "missing_role",
            f"step '{step_name}' needs one of the roles: {', '.join(sorted(step_roles))}",
        )
    if same_team_as_requester:
        return deny(
            "same_team", f"step '{step_name}' needs an approver from outside the requester's team"
        )
    return ALLOW


def check_cancel(*, user: str, requester: str, status: str) -> Decision:
    if status != "pending":
        return deny("not_pending", f"the request is {status}; it can no longer be cancelled")
    if user != requester:
        return deny("not_requester", "only the requester can cancel a request")
    return ALLOW


MAX_DELEGATION_DAYS = 90


def check_delegation(
    *,
    delegator: str,
    delegator_departments: Collection[str],
    delegator_approves: bool,
    delegate: str,
    delegate_departments: Collection[str],
    days: float,
) -> Decision:
    """May `delegator` hand their approvals to `delegate` for a period of `days`?

    Only an approver has approvals to hand over, only to a peer (someone in one of their
    departments), and only for a bounded period, so a stand-in never becomes permanent.
    """
    if delegate == delegator:
        return deny("self_delegation", "you cannot delegate to yourself")
    if not delegator_approves:
        return deny(
            "nothing_to_delegate", f"{delegator} approves nothing, so has nothing to hand over"
        )
    if not set(delegator_departments) & set(delegate_departments):
        return deny(
            "not_a_peer",
            f"{delegate} is not a peer: a delegate must work in "
            f"{' or '.join(sorted(delegator_departments))}",
        )
    if days > MAX_DELEGATION_DAYS:
        return deny("too_long", f"a delegation lasts at most {MAX_DELEGATION_DAYS} days")
    return ALLOW


def check_revoke_delegation(
    *, user: str, delegator: str, manages_all: bool, revoked: bool, ended: bool
) -> Decision:
    if user != delegator and not manages_all:
        return deny("not_delegator", "only the person who delegated can revoke it")
    if revoked:
        return deny("already_revoked", "this delegation is already revoked")
    if ended:
        return deny("already_ended", "this delegation has already ended")
    return ALLOW

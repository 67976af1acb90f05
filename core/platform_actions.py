"""What each catalogue action does to the built-in reference platform.

Every action but the withdrawal payout sets a few fields of one row. An action is a
`FieldAction`: the row it targets and a `plan` that, given the row as it is now and the
request's params, returns the new field values or refuses (a closed account cannot be
suspended). The same plan answers at submission (so a senseless request is refused before
anyone is asked to approve it) and at execution (the row may have changed meanwhile).

Applying writes the change and a `platform_changes` row in one transaction, keyed by
request and phase, so a retried activity returns the first result instead of applying the
change twice; a revert restores the fields the change set, unless someone changed them since.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Numeric
from sqlalchemy.orm import Session

from core.db import Base
from core.models import (
    Affiliate,
    BonusCampaign,
    Game,
    Market,
    PlatformChange,
    Player,
    RiskRule,
)
from workflows.contracts import ExecuteInput, ExecuteResult

APPLY = "apply"
REVERT = "revert"


class ActionRefused(Exception):
    """The platform refused the action for a business reason; retrying will not help."""


class UnknownTarget(ActionRefused):
    """The target id names nothing of the kind the action needs."""


Plan = Callable[[Any, dict[str, str]], dict[str, Any]]
Derive = Callable[[Any, dict[str, str]], dict[str, str]]


@dataclass(frozen=True)
class FieldAction:
    model: type[Base]
    noun: str
    plan: Plan
    derive: Derive | None = None


def _percent_change(old: Decimal, new: Decimal) -> str:
    if old == 0:
        return "100.00" if new else "0.00"
    return f"{abs(new - old) / old * 100:.2f}"


# --- plans: new field values for a row, or ActionRefused --------------------------------


def _require_key(options: dict[str, Any], key: str, problem: str) -> None:
    if key not in options:
        raise ActionRefused(f"{problem} '{key}' (it has {', '.join(sorted(options))})")


def _suspend_player(player: Player, params: dict[str, str]) -> dict[str, Any]:
    if player.status != "active":
        raise ActionRefused(f"player {player.id} is {player.status}; only active players")
    return {"status": "suspended"}


def _close_player(player: Player, params: dict[str, str]) -> dict[str, Any]:
    if player.status == "closed":
        raise ActionRefused(f"player {player.id} is already closed")
    return {"status": "closed"}


def _open_player(player: Player) -> None:
    if player.status == "closed":
        raise ActionRefused(f"player {player.id} is closed; the account cannot be changed")


def _override_limit(player: Player, params: dict[str, str]) -> dict[str, Any]:
    _open_player(player)
    field = params["limit"]
    value = Decimal(params["value"])
    if field == "session_limit_minutes":
        if value != value.to_integral_value():
            raise ActionRefused("a session limit is a whole number of minutes")
        return {field: int(value)}
    return {field: value}


def _change_vip(player: Player, params: dict[str, str]) -> dict[str, Any]:
    _open_player(player)
    if player.vip_tier == params["vip_tier"]:
        raise ActionRefused(f"player {player.id} is already {player.vip_tier}")
    return {"vip_tier": params["vip_tier"]}


def _change_budget(campaign: BonusCampaign, params: dict[str, str]) -> dict[str, Any]:
    if campaign.status != "active":
        raise ActionRefused(f"campaign {campaign.id} is {campaign.status}")
    budget = Decimal(params["budget"])
    if budget < campaign.spend:
        raise ActionRefused(
            f"campaign {campaign.id} has already spent {campaign.spend}; the budget cannot be lower"
        )
    if budget == campaign.budget:
        raise ActionRefused(f"campaign {campaign.id} already has a budget of {budget}")
    return {"budget": budget}


def _budget_change_size(campaign: BonusCampaign, params: dict[str, str]) -> dict[str, str]:
    return {"change_percent": _percent_change(campaign.budget, Decimal(params["budget"]))}


def _change_rate(affiliate: Affiliate, params: dict[str, str]) -> dict[str, Any]:
    if affiliate.status != "active":
        raise ActionRefused(f"affiliate {affiliate.id} is {affiliate.status}")
    rate = Decimal(params["rate"])
    if affiliate.plan != "cpa" and rate > 100:
        raise ActionRefused(f"a {affiliate.plan} rate is a percentage, at most 100")
    if rate == affiliate.rate:
        raise ActionRefused(f"affiliate {affiliate.id} already has the rate {rate}")
    return {"rate": rate}


def _rate_change_size(affiliate: Affiliate, params: dict[str, str]) -> dict[str, str]:
    return {"change_percent": _percent_change(affiliate.rate, Decimal(params["rate"]))}


def _configure_game(game: Game, params: dict[str, str]) -> dict[str, Any]:
    config = dict(game.config)
    config["max_bet"] = params["max_bet"]
    min_bet = Decimal(str(config.get("min_bet", "0")))
    if Decimal(params["max_bet"]) < min_bet:
        raise ActionRefused(f"the maximum bet is below the game's minimum bet {min_bet}")
    new = {"rtp": Decimal(params["rtp"]), "config": config}
    if new["rtp"] == game.rtp and config == game.config:
        raise ActionRefused(f"game {game.id} already has this configuration")
    return new


def _toggle_game(game: Game, params: dict[str, str]) -> dict[str, Any]:
    enabled = params["enabled"] == "enabled"
    if game.enabled == enabled:
        raise ActionRefused(f"game {game.id} is already {params['enabled']}")
    return {"enabled": enabled}


def _set_market_status(market: Market, params: dict[str, str]) -> dict[str, Any]:
    if market.status not in ("open", "suspended"):
        raise ActionRefused(f"market {market.id} is {market.status}")
    if market.status == params["status"]:
        raise ActionRefused(f"market {market.id} is already {market.status}")
    return {"status": params["status"]}


def _adjust_odds(market: Market, params: dict[str, str]) -> dict[str, Any]:
    if market.status != "open":
        raise ActionRefused(f"market {market.id} is {market.status}; odds change on open ones")
    selection = params["selection"]
    _require_key(market.odds, selection, f"market {market.id} has no selection")
    if Decimal(str(market.odds[selection])) == Decimal(params["price"]):
        raise ActionRefused(f"{selection} is already priced {params['price']}")
    return {"odds": {**market.odds, selection: params["price"]}}


def _odds_change_size(market: Market, params: dict[str, str]) -> dict[str, str]:
    current = market.odds.get(params["selection"])
    if current is None:
        return {"change_percent": "0.00"}  # the plan refuses the unknown selection
    return {"change_percent": _percent_change(Decimal(str(current)), Decimal(params["price"]))}


def _change_risk_rule(rule: RiskRule, params: dict[str, str]) -> dict[str, Any]:
    setting = params["setting"]
    _require_key(rule.threshold, setting, f"rule {rule.id} has no setting")
    threshold = {**rule.threshold, setting: params["threshold"]}
    enabled = params["enabled"] == "enabled"
    if threshold == rule.threshold and enabled == rule.enabled:
        raise ActionRefused(f"rule {rule.id} already has these settings")
    return {"threshold": threshold, "enabled": enabled}


FIELD_ACTIONS: dict[str, FieldAction] = {
    "bonus.budget_change": FieldAction(
        BonusCampaign, "campaign", _change_budget, _budget_change_size
    ),
    "affiliate.commission_rate": FieldAction(
        Affiliate, "affiliate", _change_rate, _rate_change_size
    ),
    "player.suspend": FieldAction(Player, "player", _suspend_player),
    "player.close": FieldAction(Player, "player", _close_player),
    "player.limit_override": FieldAction(Player, "player", _override_limit),
    "player.vip_change": FieldAction(Player, "player", _change_vip),
    "game.config_update": FieldAction(Game, "game", _configure_game),
    "game.availability": FieldAction(Game, "game", _toggle_game),
    "market.status": FieldAction(Market, "market", _set_market_status),
    "market.odds_adjustment": FieldAction(Market, "market", _adjust_odds, _odds_change_size),
    "risk_rule.change": FieldAction(RiskRule, "risk rule", _change_risk_rule),
}


# --- submission and execution ----------------------------------------------------------


def _row(session: Session, spec: FieldAction, target: str, *, lock: bool) -> Any:
    row = session.get(spec.model, target, with_for_update=lock)
    if row is None:
        raise UnknownTarget(f"no {spec.noun} with id '{target}'")
    return row


def check(session: Session, action: str, target: str, params: dict[str, str]) -> dict[str, str]:
    """At submission: refuse what makes no sense for the target now; return derived values."""
    spec = FIELD_ACTIONS[action]
    row = _row(session, spec, target, lock=False)
    derived = spec.derive(row, params) if spec.derive else {}
    spec.plan(row, params)
    return derived


def _json(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    return value


def _summary(
    verb: str, spec: FieldAction, target: str, before: dict[str, Any], after: dict[str, Any]
) -> str:
    parts: list[str] = []
    for field, new in after.items():
        old = before.get(field)
        if isinstance(new, dict) and isinstance(old, dict):
            parts += [f"{field}.{k} {old.get(k)} → {v}" for k, v in new.items() if old.get(k) != v]
        else:
            parts.append(f"{field} {old} → {new}")
    return f"{verb} {spec.noun} {target}: {', '.join(parts)}"


def _result(
    target: str, before: dict[str, Any], after: dict[str, Any], summary: str
) -> ExecuteResult:
    return ExecuteResult(
        before={"id": target, **before}, after={"id": target, **after}, summary=summary
    )


def recorded_change(session: Session, request_id: uuid.UUID, phase: str) -> ExecuteResult | None:
    change = session.get(PlatformChange, (request_id, phase))
    if change is None:
        return None
    return ExecuteResult(before=change.before, after=change.after, summary=change.summary)


def record_change(
    session: Session, command: ExecuteInput, phase: str, result: ExecuteResult
) -> ExecuteResult:
    """Write the change into the ledger that makes apply and revert happen once."""
    session.add(
        PlatformChange(
            request_id=uuid.UUID(command.request_id),
            phase=phase,
            action=command.action,
            target=command.target,
            before=result.before,
            after=result.after,
            summary=result.summary,
            applied_at=datetime.now(UTC),
        )
    )
    session.flush()
    return result


def apply(session: Session, command: ExecuteInput) -> ExecuteResult:
    """Apply an approved action exactly once (a repeat returns the first result)."""
    done = recorded_change(session, uuid.UUID(command.request_id), APPLY)
    if done is not None:
        return done
    spec = FIELD_ACTIONS[command.action]
    row = _row(session, spec, command.target, lock=True)
    new_values = spec.plan(row, command.params)
    before = {field: _json(getattr(row, field)) for field in new_values}
    for field, value in new_values.items():
        setattr(row, field, value)
    after = {field: _json(value) for field, value in new_values.items()}
    summary = _summary("Changed", spec, command.target, before, after)
    return record_change(session, command, APPLY, _result(command.target, before, after, summary))


def revert(session: Session, command: ExecuteInput) -> ExecuteResult:
    """Undo an applied temporary change; fields changed since by someone else are kept."""
    request_id = uuid.UUID(command.request_id)
    done = recorded_change(session, request_id, REVERT)
    if done is not None:
        return done
    applied = recorded_change(session, request_id, APPLY)
    if applied is None:
        raise ActionRefused(f"request {command.request_id} changed nothing to revert")
    spec = FIELD_ACTIONS[command.action]
    row = _row(session, spec, command.target, lock=True)
    before: dict[str, Any] = {}
    after: dict[str, Any] = {}
    kept: list[str] = []
    for field, value in applied.after.items():
        if field == "id":
            continue
        current = _json(getattr(row, field))
        if current != value:
            kept.append(field)
            continue
        restored = applied.before[field]
        numeric = isinstance(spec.model.__table__.columns[field].type, Numeric)
        setattr(row, field, Decimal(restored) if numeric and restored is not None else restored)
        before[field], after[field] = current, restored
    if after:
        summary = _summary("Reverted", spec, command.target, before, after)
    else:
        summary = f"Nothing reverted on {spec.noun} {command.target}: changed since"
    if kept:
        summary += f" (kept {', '.join(kept)}: changed since)"
    return record_change(session, command, REVERT, _result(command.target, before, after, summary))

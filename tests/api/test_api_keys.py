"""API keys end to end: a BI system calls the API with a key that carries part of its
owner's permissions, until it expires or is revoked; rate limits per key and per person.

Every refusal is checked for what it leaves behind: nothing but a security event.
"""

from __future__ import annotations

import hashlib
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import delete, func, select, update

from core.models import ApiKey, AuditEvent, RateLimitBucket, User, UserRole
from policies.engine import PolicyEngine, PolicyError, RateLimitDef
from policies.snapshot import Principal

KEYS = "/api/v1/api-keys"
PAYMENTS = "/api/v1/payments?status=pending&limit=5"


def in_days(days: float) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).isoformat()


async def create_key(
    api: httpx.AsyncClient, tokens, who: str, permissions: list[str], **extra: Any
) -> httpx.Response:
    body = {"name": "Looker export", "expires_at": in_days(30), "permissions": permissions}
    return await api.post(KEYS, json={**body, **extra}, headers=await tokens.headers(who))


async def issued_key(api, tokens, who: str, permissions: list[str]) -> dict[str, Any]:
    response = await create_key(api, tokens, who, permissions)
    assert response.status_code == 201, response.text
    return response.json()


def with_key(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def security_events(sessions, username: str, action: str) -> list[AuditEvent]:
    with sessions() as session:
        return list(
            session.execute(
                select(AuditEvent)
                .where(AuditEvent.stream == f"user:{username}")
                .where(AuditEvent.action == action)
                .order_by(AuditEvent.id)
            ).scalars()
        )


def refusals(sessions) -> int:
    with sessions() as session:
        return session.execute(
            select(func.count())
            .select_from(AuditEvent)
            .where(AuditEvent.action == "api_key.refused")
        ).scalar_one()


def stored_key(sessions, key_id: int) -> ApiKey:
    with sessions() as session:
        key = session.get(ApiKey, key_id)
        assert key is not None
        return key


def keys_of(sessions, username: str) -> int:
    with sessions() as session:
        return session.execute(
            select(func.count())
            .select_from(ApiKey)
            .join(User, User.id == ApiKey.owner_id)
            .where(User.username == username)
        ).scalar_one()


def withdrawal_body(payment_id: str) -> dict[str, Any]:
    return {
        "action": "payment.withdrawal",
        "target": payment_id,
        "params": {},
        "reason": "BI export",
    }


@pytest.fixture
def clerk(make_user) -> str:
    """A finance clerk: views payments and players, requests withdrawals."""
    return make_user(("finance.clerk",), "fin-keys", "finance")


async def test_a_key_is_used_within_its_scope_until_revoked(
    api, tokens, sessions, clerk, new_withdrawal
):
    new_withdrawal()
    created = await issued_key(api, tokens, clerk, ["payments:view"])
    secret = created["key"]
    assert secret.startswith(f"bo_{created['prefix']}_")
    assert created["state"] == "active" and created["owner"] == clerk
    stored = stored_key(sessions, created["id"])
    assert stored.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert stored.last_used_at is None

    by_bearer = await api.get(PAYMENTS, headers=with_key(secret))
    by_header = await api.get(PAYMENTS, headers={"X-API-Key": secret})
    assert by_bearer.status_code == by_header.status_code == 200, by_bearer.text
    assert by_bearer.json()["items"], "the key sees the pending payments"
    assert by_bearer.headers["X-RateLimit-Limit"] == "1000"
    assert stored_key(sessions, created["id"]).last_used_at is not None

    # The owner may request a withdrawal; the key was not given that permission.
    outside = await api.post(
        "/api/v1/requests", json=withdrawal_body(new_withdrawal()), headers=with_key(secret)
    )
    assert outside.status_code == 403, outside.text
    assert "only read" in outside.json()["detail"]

    mine = await api.get(KEYS, headers=await tokens.headers(clerk))
    assert [k["id"] for k in mine.json()["items"]] == [created["id"]]
    assert "key" not in mine.json()["items"][0], "the secret is shown once only"

    revoked = await api.post(f"{KEYS}/{created['id']}/revoke", headers=await tokens.headers(clerk))
    assert revoked.status_code == 200 and revoked.json()["state"] == "revoked"
    again = await api.post(f"{KEYS}/{created['id']}/revoke", headers=await tokens.headers(clerk))
    assert again.status_code == 409

    refused = await api.get(PAYMENTS, headers=with_key(secret))
    assert refused.status_code == 401 and "revoked" in refused.json()["detail"]

    for action in ("api_key.created", "api_key.revoked", "api_key.refused"):
        [event] = security_events(sessions, clerk, action)
        assert event.sensitivity == "security" and event.target == f"api_key:{created['prefix']}"
    [refusal] = security_events(sessions, clerk, "api_key.refused")
    assert refusal.after is not None and refusal.after["reason"] == "revoked"


async def test_an_expired_key_is_refused(api, tokens, sessions, clerk):
    created = await issued_key(api, tokens, clerk, ["payments:view"])
    with sessions() as session:
        session.execute(
            update(ApiKey)
            .where(ApiKey.id == created["id"])
            .values(
                created_at=datetime.now(UTC) - timedelta(days=2),
                expires_at=datetime.now(UTC) - timedelta(days=1),
            )
        )
        session.commit()

    response = await api.get(PAYMENTS, headers={"X-API-Key": created["key"]})

    assert response.status_code == 401 and "expired" in response.json()["detail"]
    [refusal] = security_events(sessions, clerk, "api_key.refused")
    assert refusal.after is not None and refusal.after["reason"] == "expired"
    listed = await api.get(KEYS, headers=await tokens.headers(clerk))
    assert listed.json()["items"][0]["state"] == "expired"


@pytest.mark.parametrize(
    ("permissions", "extra", "status", "words"),
    [
        (["audit:view"], {}, 403, "does not hold 'audit:view'"),
        (["payments:*"], {}, 422, "keys only read"),
        (["payment.withdrawal:approve"], {}, 422, "human act"),
        (["payments:fly"], {}, 422, "no verb 'fly'"),
        (["nothing"], {}, 422, "not '<resource>:<verb>'"),
        ([], {}, 422, "permissions"),
        (["payments:view"], {"expires_at": in_days(400)}, 422, "one year"),
        (["payments:view"], {"expires_at": in_days(-1)}, 422, "future"),
        (["payments:view"], {"expires_at": None}, 422, "expires_at"),
        (["payments:view"], {"name": "   "}, 422, "name"),
        (["payments:view"], {"owner": "admin"}, 403, "only create API keys for yourself"),
    ],
    ids=[
        "beyond-owner",
        "wildcard",
        "approve",
        "unknown-verb",
        "not-a-permission",
        "none",
        "over-a-year",
        "past",
        "no-expiry",
        "blank-name",
        "someone-else",
    ],
)
async def test_a_key_beyond_its_owner_or_the_rules_is_refused_and_nothing_written(
    api, tokens, sessions, make_user, permissions, extra, status, words
):
    manager = make_user(("finance.manager",), "fin-keys", "finance")
    before = len(security_events(sessions, manager, "api_key.created"))

    response = await create_key(api, tokens, manager, permissions, **extra)

    assert response.status_code == status, response.text
    assert words in response.json()["detail"]
    assert keys_of(sessions, manager) == 0
    assert keys_of(sessions, "admin") == 0
    assert len(security_events(sessions, manager, "api_key.created")) == before


async def test_a_key_loses_what_its_owner_loses(api, tokens, sessions, clerk):
    created = await issued_key(api, tokens, clerk, ["payments:view", "players:view"])
    assert (await api.get(PAYMENTS, headers=with_key(created["key"]))).status_code == 200

    with sessions() as session:
        session.execute(
            delete(UserRole).where(UserRole.user_id == created_owner_id(session, clerk))
        )
        session.commit()

    response = await api.get(PAYMENTS, headers=with_key(created["key"]))
    assert response.status_code == 403
    assert "payments:view" in response.json()["detail"]


def created_owner_id(session, username: str) -> int:
    return session.execute(select(User.id).where(User.username == username)).scalar_one()


async def test_a_key_cannot_decide_manage_keys_or_open_pages(
    api, tokens, sessions, make_user, clerk, new_withdrawal
):
    manager = make_user(("finance.manager",), "fin-approvers", "finance")
    created = await issued_key(api, tokens, manager, ["payments:view"])
    submitted = await api.post(
        "/api/v1/requests",
        json=withdrawal_body(new_withdrawal("900.00")),
        headers=await tokens.headers(clerk),
    )
    assert submitted.status_code == 201, submitted.text
    request_id = submitted.json()["id"]
    key = with_key(created["key"])

    decision = await api.post(
        f"/api/v1/requests/{request_id}/decision",
        json={"decision": "approve", "comment": "from the BI tool"},
        headers=key,
    )
    assert decision.status_code == 403 and "human act" in decision.json()["detail"]
    bulk = await api.post(
        "/api/v1/tasks/bulk-decision", json={"task_ids": [1], "decision": "approve"}, headers=key
    )
    assert bulk.status_code == 403
    create = await api.post(
        KEYS,
        json={"name": "child", "expires_at": in_days(1), "permissions": ["payments:view"]},
        headers=key,
    )
    assert create.status_code == 403 and "person" in create.json()["detail"]
    assert (await api.get(KEYS, headers=key)).status_code == 403
    assert keys_of(sessions, manager) == 1

    page = await api.get("/tasks", headers={"X-API-Key": created["key"], **key})
    assert page.status_code == 303 and page.headers["location"].startswith("/login")

    still = await api.get(f"/api/v1/requests/{request_id}", headers=await tokens.headers(clerk))
    assert still.json()["status"] == "pending"


async def test_forged_unknown_and_malformed_keys_are_refused_and_only_recorded(
    api, tokens, sessions, clerk
):
    created = await issued_key(api, tokens, clerk, ["payments:view"])
    real = created["key"]
    forged = real[:-4] + ("AAAA" if not real.endswith("AAAA") else "BBBB")
    unknown = f"bo_{'0' * 12}_{real.split('_', 2)[2]}"
    presented = [
        with_key(forged),
        {"X-API-Key": unknown},
        {"X-API-Key": "bo_short"},
        {"X-API-Key": "not-a-key"},
        with_key("bo_" + "x" * 5000),
    ]
    before = refusals(sessions)

    for headers in presented:
        response = await api.get(PAYMENTS, headers=headers)
        assert response.status_code == 401, response.text
        assert response.json()["detail"] == "invalid API key"

    assert refusals(sessions) == before + len(presented)
    [forgery] = security_events(sessions, clerk, "api_key.refused")
    assert forgery.after is not None and forgery.after["reason"] == "wrong_secret"
    assert stored_key(sessions, created["id"]).last_used_at is None
    with sessions() as session:
        assert session.get(RateLimitBucket, f"key:{created['id']}") is None
    both = await api.get(PAYMENTS, headers={**with_key(real), "X-API-Key": real})
    assert both.status_code == 401


async def test_an_admin_issues_a_key_for_a_service_user_and_lists_every_key(
    api, tokens, sessions, make_user, clerk
):
    service = make_user(("finance.accountant",), "bi-service", "finance")
    issued = await api.post(
        KEYS,
        json={
            "name": "Tableau",
            "expires_at": in_days(365),
            "permissions": ["payments:view", "commissions:view"],
            "owner": service,
        },
        headers=await tokens.headers("admin"),
    )
    assert issued.status_code == 201, issued.text
    assert issued.json()["owner"] == service and issued.json()["created_by"] == "admin"
    [event] = security_events(sessions, service, "api_key.created")
    assert event.actor == "admin"
    await issued_key(api, tokens, clerk, ["players:view"])

    everyone = await api.get(
        f"{KEYS}?everyone=true&limit=200", headers=await tokens.headers("admin")
    )
    owners = {k["owner"] for k in everyone.json()["items"]}
    assert {service, clerk} <= owners
    refused = await api.get(f"{KEYS}?everyone=true", headers=await tokens.headers(clerk))
    assert refused.status_code == 403
    hidden = await api.post(
        f"{KEYS}/{issued.json()['id']}/revoke", headers=await tokens.headers(clerk)
    )
    assert hidden.status_code == 404
    assert stored_key(sessions, issued.json()["id"]).revoked_at is None


@pytest.fixture
def tiny_limit(runtime, monkeypatch) -> RateLimitDef:
    """Accountants may make 3 requests at once, then one an hour."""
    limit = RateLimitDef(per_hour=1, burst=3)
    roles = runtime.policy.roles
    accountant = roles.roles["finance.accountant"].model_copy(update={"rate_limit": limit})
    limited = roles.model_copy(update={"roles": {**roles.roles, "finance.accountant": accountant}})
    monkeypatch.setattr(runtime, "policy", PolicyEngine(limited, runtime.policy.chains))
    return limit


async def test_rate_limits_apply_per_person_whatever_the_number_of_keys(
    api, tokens, make_user, runtime, request
):
    accountant = make_user(("finance.accountant",), "fin-limits", "finance")
    first = await issued_key(api, tokens, accountant, ["payments:view"])
    second = await issued_key(api, tokens, accountant, ["payments:view"])
    person = await tokens.headers(accountant)
    limit = request.getfixturevalue("tiny_limit")

    answers = [await api.get(PAYMENTS, headers=with_key(first["key"])) for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert [a.headers["X-RateLimit-Remaining"] for a in answers] == ["2", "1", "0", "0"]
    over = answers[-1]
    assert 3500 <= int(over.headers["Retry-After"]) <= 3600
    assert over.headers["X-RateLimit-Limit"] == str(limit.per_hour)
    assert "rate limit" in over.json()["detail"]

    # A key's calls count against its owner too: a second key, or the person's own
    # token, finds the same bucket empty; someone else has their own.
    assert (await api.get(PAYMENTS, headers={"X-API-Key": second["key"]})).status_code == 429
    own = await api.get(PAYMENTS, headers=person)
    assert own.status_code == 429 and "Retry-After" in own.headers
    colleague = make_user(("finance.accountant",), "fin-limits", "finance")
    theirs = [await api.get(PAYMENTS, headers=await tokens.headers(colleague)) for _ in range(4)]
    assert [a.status_code for a in theirs] == [200, 200, 200, 429]


@pytest.mark.parametrize(
    "rate_limit",
    ["{per_hour: 0, burst: 10}", "{per_hour: 100}", "{per_hour: 100, burst: 10, per_day: 5}"],
    ids=["zero", "no-burst", "unknown-key"],
)
def test_a_bad_rate_limit_in_roles_yaml_stops_start_up_naming_the_role(tmp_path, rate_limit):
    source = Path(__file__).resolve().parents[2] / "policies"
    for name in ("roles.yaml", "approval_chains.yaml"):
        shutil.copy(source / name, tmp_path / name)
    roles = tmp_path / "roles.yaml"
    text = roles.read_text()
    anchor = "  finance.accountant:\n    department: finance\n"
    assert anchor in text
    roles.write_text(text.replace(anchor, f"{anchor}    rate_limit: {rate_limit}\n"))

    with pytest.raises(PolicyError, match=r"roles\.finance\.accountant\.rate_limit"):
        PolicyEngine.load(tmp_path)


def test_a_person_gets_the_most_generous_limit_of_their_roles(tmp_path):
    source = Path(__file__).resolve().parents[2] / "policies"
    for name in ("roles.yaml", "approval_chains.yaml"):
        shutil.copy(source / name, tmp_path / name)
    roles = tmp_path / "roles.yaml"
    anchor = "  finance.accountant:\n    department: finance\n"
    limited = f"{anchor}    rate_limit: {{per_hour: 5000, burst: 50}}\n"
    roles.write_text(roles.read_text().replace(anchor, limited))
    policy = PolicyEngine.load(tmp_path)

    def limit(*held: str) -> tuple[int, int]:
        found = policy.rate_limit_of(Principal(1, "someone", frozenset(held)))
        return found.per_hour, found.burst

    assert limit("finance.accountant") == (5000, 50)
    assert limit("finance.accountant", "finance.clerk") == (5000, 50)
    assert limit("finance.clerk") == limit() == (1000, 300)


async def test_a_key_reads_reports_and_nothing_else(api, tokens, make_user):
    """Keys are for reporting systems: no delegation, claim, cancel or request through one."""
    manager = make_user(("finance.manager",), "fin-keys", "finance")
    peer = make_user(("finance.manager",), "fin-treasury", "finance")
    key = with_key((await issued_key(api, tokens, manager, ["payments:view"]))["key"])
    delegation = await api.post(
        "/api/v1/delegations",
        json={"delegate": peer, "ends_at": in_days(2), "reason": "from the BI tool"},
        headers=key,
    )
    assert delegation.status_code == 403 and "only read" in delegation.json()["detail"]
    for path in ("/api/v1/tasks", "/api/v1/requests", "/api/v1/delegations"):
        assert (await api.get(path, headers=key)).status_code == 403, path
    assert (await api.get(PAYMENTS, headers=key)).status_code == 200


@pytest.mark.parametrize(
    ("permissions", "words"),
    [(["payment.withdrawal:request"], "only read"), (["players:edit"], "only read")],
)
async def test_a_key_holds_view_permissions_only(api, tokens, clerk, permissions, words):
    refused = await api.post(
        KEYS,
        json={"name": "x", "expires_at": in_days(3), "permissions": permissions},
        headers=await tokens.headers(clerk),
    )
    assert refused.status_code == 422, refused.text
    assert words in refused.json()["detail"]


async def test_a_key_manager_cannot_put_on_a_key_what_they_do_not_hold(
    api, tokens, make_user, runtime, monkeypatch
):
    roles = runtime.policy.roles
    officer = roles.roles["compliance.officer"]
    managing = officer.model_copy(update={"permissions": [*officer.permissions, "api_keys:manage"]})
    policy = roles.model_copy(update={"roles": {**roles.roles, "compliance.officer": managing}})
    monkeypatch.setattr(runtime, "policy", PolicyEngine(policy, runtime.policy.chains))
    keeper = make_user(("compliance.officer",), "compliance", "compliance")
    owner = make_user(("finance.manager",), "bi-service", "finance")
    officer_alone = Principal(0, keeper, frozenset({"compliance.officer"}))
    assert not runtime.policy.authorize(officer_alone, "commissions:view")
    body = {"name": "x", "expires_at": in_days(3), "owner": owner}
    lacking = await api.post(
        KEYS,
        json={**body, "permissions": ["commissions:view"]},
        headers=await tokens.headers(keeper),
    )
    assert lacking.status_code == 403, lacking.text
    assert "do not hold 'commissions:view' yourself" in lacking.json()["detail"]
    shared = await api.post(
        KEYS, json={**body, "permissions": ["payments:view"]}, headers=await tokens.headers(keeper)
    )
    assert shared.status_code == 201, shared.text

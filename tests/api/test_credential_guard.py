"""Refused machine credentials, per client address: audited one by one while the address
has budget, then a 429 with one `credential.throttled` event per episode, so that a flood
cannot fill the audit store. Good credentials never count and are never throttled.

Each test calls from addresses of its own (the ASGI transport sets the client address), so
the buckets of one test do not leak into another.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from datetime import timedelta

import httpx
import pytest
from jose import jwt
from pydantic import SecretStr
from sqlalchemy import select, update

from api.app import create_app
from core.models import AuditEvent, RateLimitBucket, User
from core.runtime import Runtime
from core.scim import ERROR_SCHEMA
from core.security import ACCESS, REFRESH, encode_token
from tests.api.test_api_keys import PAYMENTS, issued_key, with_key
from tests.api.test_auth import b64url, claims_for, secret, user_id

BURST = 5
SCIM_TOKEN = "scim-guard-" + "z" * 40
# 198.18.0.0/15 (benchmarking) is used by no other test, whatever order they run in.
_addresses = (f"198.18.{n // 250}.{n % 250 + 1}" for n in itertools.count())

Caller = Callable[[], Awaitable[httpx.AsyncClient]]


@pytest.fixture
def tight_budget(runtime: Runtime) -> Iterator[None]:
    """A budget of BURST refusals that refills one an hour: nothing refills mid-test."""
    plain = runtime.settings
    runtime.settings = plain.model_copy(
        update={
            "credential_failures_burst": BURST,
            "credential_failures_per_hour": 1,
            "scim_token": SecretStr(SCIM_TOKEN),
        }
    )
    try:
        yield
    finally:
        runtime.settings = plain


@pytest.fixture
async def from_new_address(runtime: Runtime, tight_budget: None) -> AsyncIterator[Caller]:
    """Opens a client of the API that calls from an address no other test uses."""
    app = create_app(runtime)
    async with AsyncExitStack() as stack:

        async def open_client() -> httpx.AsyncClient:
            transport = httpx.ASGITransport(app=app, client=(next(_addresses), 40000))
            return await stack.enter_async_context(
                httpx.AsyncClient(transport=transport, base_url="http://testserver")
            )

        yield open_client


def address_of(client: httpx.AsyncClient) -> str:
    transport = client._transport
    assert isinstance(transport, httpx.ASGITransport)
    return transport.client[0]


def events_from(sessions, client: httpx.AsyncClient, action: str | None = None) -> list:
    query = select(AuditEvent).where(AuditEvent.ip == address_of(client))
    if action is not None:
        query = query.where(AuditEvent.action == action)
    with sessions() as session:
        return list(session.execute(query.order_by(AuditEvent.id)).scalars())


def unknown_key(real: str) -> str:
    """A well-formed key whose prefix no row has."""
    return f"bo_{'0' * 12}_{real.split('_', 2)[2]}"


def wrong_secret(real: str) -> str:
    return real[:-4] + ("AAAA" if not real.endswith("AAAA") else "BBBB")


@pytest.fixture
async def key(api, tokens, make_user) -> str:
    clerk = make_user(("finance.clerk",), "fin-keys", "finance")
    return str((await issued_key(api, tokens, clerk, ["payments:view"]))["key"])


def assert_throttled(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert int(response.headers["retry-after"]) > 0
    assert "too many refused credentials" in response.json()["detail"]


async def test_refused_keys_are_audited_until_the_budget_is_spent_then_throttled_once(
    from_new_address, sessions, key
):
    scanner = await from_new_address()
    for n in range(BURST):
        bad = unknown_key(key) if n % 2 else wrong_secret(key)
        response = await scanner.get(PAYMENTS, headers=with_key(bad))
        assert response.status_code == 401, response.text
        assert response.json()["detail"] == "invalid API key"
    refused = events_from(sessions, scanner, "api_key.refused")
    assert [e.after["reason"] for e in refused] == ["wrong_secret", "unknown"] * 2 + [
        "wrong_secret"
    ]

    # Spent: whether the prefix exists or not, the same 429, and no event per request.
    existing = await scanner.get(PAYMENTS, headers=with_key(wrong_secret(key)))
    made_up = await scanner.get(PAYMENTS, headers={"X-API-Key": unknown_key(key)})
    malformed = await scanner.get(PAYMENTS, headers={"X-API-Key": "bo_short"})
    for response in (existing, made_up, malformed):
        assert_throttled(response)
    assert existing.json() == made_up.json() == malformed.json()
    assert len(events_from(sessions, scanner, "api_key.refused")) == BURST
    [throttled] = events_from(sessions, scanner, "credential.throttled")
    assert throttled.sensitivity == "security"
    assert throttled.after is not None and throttled.after["credential"] == "api_key"

    # The right key still works from the throttled address, and spends nothing.
    assert (await scanner.get(PAYMENTS, headers=with_key(key))).status_code == 200

    elsewhere = await from_new_address()
    other = await elsewhere.get(PAYMENTS, headers=with_key(wrong_secret(key)))
    assert other.status_code == 401, "another address has its own budget"
    assert len(events_from(sessions, elsewhere, "api_key.refused")) == 1
    assert (await elsewhere.get(PAYMENTS, headers=with_key(key))).status_code == 200


async def test_good_credentials_never_spend_the_budget(from_new_address, key, tokens):
    client = await from_new_address()
    person = await tokens.headers("fin.clerk")
    for _ in range(BURST + 2):
        assert (await client.get(PAYMENTS, headers=with_key(key))).status_code == 200
        assert (await client.get("/api/v1/me", headers=person)).status_code == 200
    refused = await client.get(PAYMENTS, headers=with_key(wrong_secret(key)))
    assert refused.status_code == 401, "the whole budget is still there"


async def test_a_new_episode_after_the_budget_came_back_is_recorded_again(
    from_new_address, sessions, key
):
    client = await from_new_address()
    for _ in range(BURST + 3):
        await client.get(PAYMENTS, headers=with_key(unknown_key(key)))
    assert len(events_from(sessions, client, "credential.throttled")) == 1

    # An hour later (the bucket refilled), refusals are audited again and end the episode.
    with sessions() as session:
        session.execute(
            update(RateLimitBucket)
            .where(RateLimitBucket.subject == f"credentials:{address_of(client)}")
            .values(tokens=2)
        )
        session.commit()
    for _ in range(2):
        response = await client.get(PAYMENTS, headers=with_key(unknown_key(key)))
        assert response.status_code == 401
    assert_throttled(await client.get(PAYMENTS, headers=with_key(unknown_key(key))))
    assert len(events_from(sessions, client, "api_key.refused")) == BURST + 2
    assert len(events_from(sessions, client, "credential.throttled")) == 2


async def test_a_flood_of_any_credentials_adds_a_bounded_number_of_audit_rows(
    from_new_address, sessions, key
):
    client = await from_new_address()
    forged = jwt.encode(claims_for(1), "another-key-" + "y" * 40, algorithm="HS256")
    statuses = []
    for n in range(200):
        headers = with_key(unknown_key(key)) if n % 2 else {"Authorization": f"Bearer {forged}"}
        statuses.append((await client.get(PAYMENTS, headers=headers)).status_code)

    assert statuses[:BURST] == [401] * BURST and set(statuses[BURST:]) == {429}
    # Every refusal event carries the caller's address: these are all the flood wrote.
    assert len(events_from(sessions, client)) == BURST + 1


async def test_forged_access_tokens_are_audited_with_the_reason_never_the_token(
    from_new_address, sessions, settings
):
    client = await from_new_address()
    admin = user_id(sessions, "admin")
    alg_none = f"{b64url({'alg': 'none', 'typ': 'JWT'})}.{b64url(claims_for(admin))}."
    other_key = jwt.encode(claims_for(admin), "another-key-" + "y" * 40, algorithm="HS256")
    refresh_as_access, _ = encode_token(
        secret(settings), user_id=admin, token_type=REFRESH, lifetime=timedelta(minutes=5)
    )
    for token in (alg_none, other_key, refresh_as_access):
        response = await client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401, response.text
        assert response.json()["detail"] == "invalid or expired token"

    refused = events_from(sessions, client, "auth.token_refused")
    assert [e.after for e in refused] == [
        {"reason": "bad_signature"},
        {"reason": "bad_signature"},
        {"reason": "wrong_claims"},
    ]
    assert {(e.sensitivity, e.channel, e.actor) for e in refused} == {
        ("security", "api", "unknown")
    }
    assert not any(token in str(e.after) for e in refused for token in (alg_none, other_key))


async def test_a_deactivated_persons_token_is_audited_as_an_unknown_user(
    from_new_address, sessions, settings, make_user
):
    client = await from_new_address()
    username = make_user(("finance.clerk",), "fin-payouts", "finance")
    token, _ = encode_token(
        secret(settings),
        user_id=user_id(sessions, username),
        token_type=ACCESS,
        lifetime=timedelta(minutes=5),
    )
    with sessions() as session:
        session.execute(update(User).where(User.username == username).values(is_active=False))
        session.commit()

    response = await client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 401
    [refused] = events_from(sessions, client, "auth.token_refused")
    assert refused.after == {"reason": "unknown_user"}


async def test_expired_access_tokens_are_neither_audited_nor_counted(
    from_new_address, sessions, settings
):
    client = await from_new_address()
    expired, _ = encode_token(
        secret(settings),
        user_id=user_id(sessions, "fin.clerk"),
        token_type=ACCESS,
        lifetime=timedelta(minutes=-1),
    )
    for _ in range(BURST + 2):
        response = await client.get("/api/v1/me", headers={"Authorization": f"Bearer {expired}"})
        assert response.status_code == 401, "clients refresh on 401; never throttled"
    assert events_from(sessions, client) == []


async def test_wrong_scim_tokens_are_audited_then_throttled(from_new_address, sessions):
    client = await from_new_address()
    wrong = {"Authorization": "Bearer not-the-scim-token"}
    missing = await client.get("/scim/v2/Users")
    assert missing.status_code == 401
    assert events_from(sessions, client) == [], "no token presented, nothing guessed"

    for _ in range(BURST):
        refused = await client.get("/scim/v2/Users", headers=wrong)
        assert refused.status_code == 401 and refused.json()["schemas"] == [ERROR_SCHEMA]
    audited = events_from(sessions, client, "scim.token_refused")
    assert len(audited) == BURST
    assert {(e.channel, e.sensitivity) for e in audited} == {("scim", "security")}
    assert audited[0].after == {"reason": "wrong_token"}

    for _ in range(3):
        throttled = await client.get("/scim/v2/Users", headers=wrong)
        assert throttled.status_code == 429, throttled.text
        assert throttled.json()["schemas"] == [ERROR_SCHEMA]
        assert "too many refused credentials" in throttled.json()["detail"]
        assert int(throttled.headers["retry-after"]) > 0
    [episode] = events_from(sessions, client, "credential.throttled")
    assert episode.after is not None and episode.after["credential"] == "scim_token"
    assert len(events_from(sessions, client, "scim.token_refused")) == BURST

    good = await client.get("/scim/v2/Users", headers={"Authorization": f"Bearer {SCIM_TOKEN}"})
    assert good.status_code == 200, good.text


async def test_one_ipv6_network_shares_one_budget(runtime: Runtime, tight_budget: None, key):
    """A host in an IPv6 /64 can take a new address for each attempt: the /64 counts."""
    app = create_app(runtime)
    network = f"2001:db8:{secrets.randbelow(0xFFFF):x}:1"

    def client_at(address: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, client=(address, 40000))
        return httpx.AsyncClient(transport=transport, base_url="http://testserver")

    for n in range(BURST):
        async with client_at(f"{network}::{n + 1:x}") as hopping:
            bad = await hopping.get(PAYMENTS, headers=with_key(wrong_secret(key)))
            assert bad.status_code == 401, bad.text
    async with client_at(f"{network}::ffff") as next_address:
        assert_throttled(await next_address.get(PAYMENTS, headers=with_key(wrong_secret(key))))
    async with client_at(f"{network[:-1]}2::1") as next_network:
        other = await next_network.get(PAYMENTS, headers=with_key(wrong_secret(key)))
        assert other.status_code == 401, "another /64 has its own budget"


async def test_a_client_address_that_is_not_an_ip_is_not_stored(runtime: Runtime, key, sessions):
    """What a connection or proxy claims as the address is kept only if it is one."""
    app = create_app(runtime)
    odd = "not-an-address-" + "x" * 80
    transport = httpx.ASGITransport(app=app, client=(odd, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        refused = await client.get(PAYMENTS, headers=with_key(wrong_secret(key)))
        assert refused.status_code == 401, refused.text
        forged = await client.get(PAYMENTS, headers={"Authorization": "Bearer x.y.z"})
        assert forged.status_code == 401, forged.text
    with sessions() as session:
        stored = session.execute(select(AuditEvent.ip).where(AuditEvent.ip.like("not-an-%")))
        assert stored.first() is None

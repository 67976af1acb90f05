"""The API keys page: a key is issued with the secret shown once, works on the API until
revoked, and every bad form is an inline message that issues nothing."""

from __future__ import annotations

import re

import httpx
from sqlalchemy import func, select

from core.db import SessionFactory
from core.models import ApiKey, AuditEvent
from tests.conftest import csrf_of, sign_in_and_open

SECRET = re.compile(r'id="new-api-key">(bo_[^<]+)<')


def key_count(sessions: SessionFactory) -> int:
    with sessions() as session:
        return session.execute(select(func.count()).select_from(ApiKey)).scalar_one()


async def test_issue_use_and_revoke_a_key_from_the_page(web: httpx.AsyncClient, api, sessions):
    page = await sign_in_and_open(web, "fin.clerk", "/account/api-keys")
    assert page.status_code == 200
    assert 'value="payments:view"' in page.text
    assert 'value="audit:view"' not in page.text  # only what the clerk holds is offered

    issued = await web.post(
        "/account/api-keys",
        data={
            "csrf_token": csrf_of(page),
            "name": "Payouts dashboard",
            "permissions": "payments:view",
            "lifetime": "30",
        },
    )
    assert issued.status_code == 201, issued.text
    assert issued.headers["cache-control"] == "no-store"
    secret = SECRET.search(issued.text)
    assert secret, issued.text
    assert "never shown again" in issued.text
    row = re.search(r'<tr id="api-key-(\d+)">(.*?)</tr>', issued.text, re.S)
    assert row and "Payouts dashboard" in row.group(2) and "Active" in row.group(2)

    read = await api.get("/api/v1/payments", headers={"X-API-Key": secret.group(1)})
    assert read.status_code == 200, read.text
    again = await web.get("/account/api-keys")
    assert secret.group(1) not in again.text  # shown once only

    revoked = await web.post(
        f"/account/api-keys/{row.group(1)}/revoke", data={"csrf_token": csrf_of(again)}
    )
    assert revoked.status_code == 200  # back on the page after the redirect
    assert re.search(rf'id="api-key-{row.group(1)}">.*?Revoked', revoked.text, re.S)
    refused = await api.get("/api/v1/payments", headers={"X-API-Key": secret.group(1)})
    assert refused.status_code == 401
    with sessions() as session:
        actions = set(
            session.execute(
                select(AuditEvent.action).where(AuditEvent.stream == "user:fin.clerk")
            ).scalars()
        )
    assert {"api_key.created", "api_key.revoked"} <= actions


async def test_bad_forms_are_inline_messages_and_issue_nothing(web: httpx.AsyncClient, sessions):
    page = await sign_in_and_open(web, "fin.clerk", "/account/api-keys")
    csrf = csrf_of(page)
    before = key_count(sessions)
    good = {"csrf_token": csrf, "name": "BI", "permissions": "payments:view", "lifetime": "90"}
    cases: list[tuple[dict[str, str], int, str]] = [
        ({**good, "name": ""}, 422, "name: required"),
        ({**good, "name": "x" * 101}, 422, "name: at most 100 characters"),
        ({**good, "name": "nul\x00here"}, 422, "name: contains control characters"),
        ({**good, "lifetime": "3"}, 422, "lifetime: choose"),
        ({**good, "lifetime": "ninety"}, 422, "lifetime: choose"),
        ({k: v for k, v in good.items() if k != "permissions"}, 422, "name at least one"),
        ({**good, "permissions": "audit:view"}, 403, "does not hold"),
        ({**good, "permissions": "payment.withdrawal:approve"}, 422, "deciding is a human act"),
        ({**good, "permissions": "players:edit"}, 422, "keys only read"),
        ({**good, "permissions": "nonsense"}, 422, "nonsense&#39; is not"),
        ({**good, "owner": "admin"}, 403, "only create API keys for yourself"),
    ]
    for form, status, words in cases:
        answer = await web.post("/account/api-keys", data=form)
        assert answer.status_code == status, (form, answer.text)
        assert words in answer.text, (form, answer.text)
        assert 'role="alert"' in answer.text
        assert "new-api-key" not in answer.text
    assert key_count(sessions) == before

    no_csrf = await web.post(
        "/account/api-keys", data={k: v for k, v in good.items() if k != "csrf_token"}
    )
    assert no_csrf.status_code == 403
    assert key_count(sessions) == before
    unknown = await web.post("/account/api-keys/999999999/revoke", data={"csrf_token": csrf})
    assert unknown.status_code == 404 and "API key not found" in unknown.text


async def test_a_key_manager_sees_everyones_and_others_see_only_their_own(
    web: httpx.AsyncClient, runtime, worker
):
    page = await sign_in_and_open(web, "fin.clerk", "/account/api-keys")
    made = await web.post(
        "/account/api-keys",
        data={
            "csrf_token": csrf_of(page),
            "name": "Clerk's report",
            "permissions": "payments:view",
            "lifetime": "7",
        },
    )
    assert made.status_code == 201, made.text
    row = re.search(r'<tr id="api-key-(\d+)">', made.text)
    assert row

    from api.app import create_app  # a second person's browser

    transport = httpx.ASGITransport(app=create_app(runtime))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://testserver", follow_redirects=True
    ) as other:
        director = await sign_in_and_open(other, "fin.director", "/account/api-keys")
        assert "Clerk&#39;s report" not in director.text and "Clerk's report" not in director.text
        theirs = await other.post(
            f"/account/api-keys/{row.group(1)}/revoke", data={"csrf_token": csrf_of(director)}
        )
        assert theirs.status_code == 404  # someone else's key is not even named
        await other.post("/logout", data={"csrf_token": csrf_of(director)})
        admin = await sign_in_and_open(other, "admin", "/account/api-keys")
        assert "Everyone else" in admin.text and f'id="api-key-{row.group(1)}"' in admin.text
        assert 'id="owner"' in admin.text
        nul_owner = await other.post(
            "/account/api-keys",
            data={
                "csrf_token": csrf_of(admin),
                "name": "svc",
                "owner": "svc\x00bot",
                "permissions": "payments:view",
                "lifetime": "7",
            },
        )
        assert nul_owner.status_code == 422 and "owner: contains control characters" in (
            nul_owner.text
        )
        revoked = await other.post(
            f"/account/api-keys/{row.group(1)}/revoke", data={"csrf_token": csrf_of(admin)}
        )
        assert revoked.status_code == 200
        # Someone else's key that no longer works leaves the manager's list.
        assert f'id="api-key-{row.group(1)}"' not in revoked.text

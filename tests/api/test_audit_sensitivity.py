"""The security events (sign-ins, failures, MFA, keys, role changes) can be listed apart."""

from __future__ import annotations

import re

import httpx

from tests.conftest import Tokens, sign_in_and_open


async def test_the_api_lists_only_security_events_when_asked(
    api: httpx.AsyncClient, tokens: Tokens, new_withdrawal
):
    submitted = await api.post(
        "/api/v1/requests",
        json={
            "action": "payment.withdrawal",
            "target": new_withdrawal(),
            "params": {},
            "reason": "r",
        },
        headers=await tokens.headers("fin.clerk"),
    )
    assert submitted.status_code == 201, submitted.text  # ordinary events beside security ones
    failed = await api.post(
        "/api/v1/auth/token", json={"username": "fin.clerk", "password": "not-it"}
    )
    assert failed.status_code == 401
    headers = await tokens.headers("comp.officer")
    listed = await api.get("/api/v1/audit", params={"sensitivity": "security"}, headers=headers)
    assert listed.status_code == 200, listed.text
    events = listed.json()["items"]
    assert events and {e["sensitivity"] for e in events} == {"security"}
    assert any(e["action"] == "auth.login_failed" and e["actor"] == "fin.clerk" for e in events)

    everything = await api.get("/api/v1/audit", params={"limit": 500}, headers=headers)
    assert {e["sensitivity"] for e in everything.json()["items"]} - {"security"}

    for bad in ("secret", "", "SECURITY"):
        refused = await api.get("/api/v1/audit", params={"sensitivity": bad}, headers=headers)
        assert refused.status_code == 422, (bad, refused.text)


async def test_the_compliance_page_filters_by_sensitivity(web: httpx.AsyncClient, tokens: Tokens):
    await tokens.headers("fin.clerk")  # a sign-in: a security event
    page = await sign_in_and_open(web, "comp.officer", "/w/compliance/audit?sensitivity=security")
    assert page.status_code == 200
    shown = re.findall(r'data-sensitivity="([a-z]+)"', page.text)
    assert shown and set(shown) == {"security"}, shown
    assert "auth.login" in page.text

    bad = await web.get("/w/compliance/audit?sensitivity=secret")
    assert "Sensitivity must be one of" in bad.text
    assert 'role="alert"' in bad.text and not re.findall(r'data-sensitivity="', bad.text)

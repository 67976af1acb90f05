"""SCIM 2.0 provisioning, as an identity provider drives it: people created, found,
replaced and deactivated; group membership that gives roles; refusals in SCIM's error
schema that write nothing."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import func, select

from core.db import SessionFactory
from core.identity import NO_LOCAL_PASSWORD
from core.models import AuditEvent, User
from core.runtime import Runtime
from core.scim import ERROR_SCHEMA, GROUP_SCHEMA, LIST_SCHEMA, PATCH_SCHEMA, USER_SCHEMA
from tests.identity.conftest import events, user_row
from tests.identity.test_oidc import new_person, to_callback

SCIM_TOKEN = "scim-" + "x" * 40
AUTH = {"Authorization": f"Bearer {SCIM_TOKEN}"}


@pytest.fixture
def scim_on(runtime: Runtime) -> Iterator[None]:
    plain = runtime.settings
    runtime.settings = plain.model_copy(update={"scim_token": SecretStr(SCIM_TOKEN)})
    try:
        yield
    finally:
        runtime.settings = plain


def writes(sessions: SessionFactory) -> tuple[int, int]:
    """How many users and audit events there are: refusals must leave both alone."""
    with sessions() as session:
        users = session.execute(select(func.count()).select_from(User)).scalar_one()
        audit = session.execute(select(func.count()).select_from(AuditEvent)).scalar_one()
        return users, audit


def person(user_name: str | None = None, **extra: object) -> dict[str, object]:
    return {
        "schemas": [USER_SCHEMA],
        "userName": user_name or f"scim.{secrets.token_hex(4)}",
        "displayName": "Sky Provisioned",
        **extra,
    }


async def create(
    api: httpx.AsyncClient, user_name: str | None = None, **extra: object
) -> dict[str, object]:
    created = await api.post("/scim/v2/Users", json=person(user_name, **extra), headers=AUTH)
    assert created.status_code == 201, created.text
    body: dict[str, object] = created.json()
    return body


async def group_id(api: httpx.AsyncClient, name: str) -> str:
    """The id of the stored group `name`, created (empty) by the provider if need be."""
    found = await api.get(
        "/scim/v2/Groups", params={"filter": f'displayName eq "{name}"'}, headers=AUTH
    )
    assert found.status_code == 200, found.text
    if found.json()["Resources"]:
        return str(found.json()["Resources"][0]["id"])
    created = await api.post(
        "/scim/v2/Groups", json={"schemas": [GROUP_SCHEMA], "displayName": name}, headers=AUTH
    )
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def members(user_id: object, op: str = "add") -> dict[str, object]:
    return {
        "schemas": [PATCH_SCHEMA],
        "Operations": [{"op": op, "path": "members", "value": [{"value": user_id}]}],
    }


def assert_error(response: httpx.Response, status: int, words: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/scim+json")
    body = response.json()
    assert body["schemas"] == [ERROR_SCHEMA] and body["status"] == str(status)
    assert words in body["detail"]


async def test_a_created_person_can_be_read_back_and_has_no_password_here(api, scim_on, sessions):
    created = await api.post(
        "/scim/v2/Users",
        json=person("sky.created", externalId="idp-1", active=True),
        headers=AUTH,
    )
    assert created.status_code == 201, created.text
    assert created.headers["content-type"].startswith("application/scim+json")
    body = created.json()
    assert created.headers["location"].endswith(f"/scim/v2/Users/{body['id']}")
    assert (body["userName"], body["displayName"], body["active"]) == (
        "sky.created",
        "Sky Provisioned",
        True,
    )
    assert body["externalId"] == "idp-1" and body["groups"] == []

    fetched = await api.get(f"/scim/v2/Users/{body['id']}", headers=AUTH)
    assert fetched.status_code == 200 and fetched.json() == body

    found = user_row(sessions, "sky.created")
    assert found is not None
    user, roles = found
    assert (user.auth_source, user.password_hash, roles) == ("oidc", NO_LOCAL_PASSWORD, set())
    [provisioned] = events(sessions, "sky.created", "auth.user_provisioned")
    assert provisioned.channel == "scim" and provisioned.sensitivity == "security"

    refused = await api.post(
        "/api/v1/auth/token", json={"username": "sky.created", "password": NO_LOCAL_PASSWORD}
    )
    assert refused.status_code == 401


async def test_filter_by_user_name_finds_only_that_person(api, scim_on):
    wanted = await create(api)
    await create(api)
    found = await api.get(
        "/scim/v2/Users", params={"filter": f'userName eq "{wanted["userName"]}"'}, headers=AUTH
    )
    assert found.status_code == 200
    listing = found.json()
    assert listing["schemas"] == [LIST_SCHEMA]
    assert (listing["totalResults"], listing["itemsPerPage"]) == (1, 1)
    assert listing["Resources"][0]["id"] == wanted["id"]

    nobody = await api.get(
        "/scim/v2/Users", params={"filter": 'userName eq "no.such.person"'}, headers=AUTH
    )
    assert nobody.json()["totalResults"] == 0 and nobody.json()["Resources"] == []


async def test_local_accounts_are_not_scims_to_see(api, scim_on, sessions):
    found = user_row(sessions, "ops.agent")
    assert found is not None
    by_name = await api.get(
        "/scim/v2/Users", params={"filter": 'userName eq "ops.agent"'}, headers=AUTH
    )
    assert by_name.json()["totalResults"] == 0
    assert_error(await api.get(f"/scim/v2/Users/{found[0].id}", headers=AUTH), 404, "no user")


async def test_pages_follow_start_index_and_count(api, scim_on):
    for _ in range(3):
        await create(api)
    everyone = (await api.get("/scim/v2/Users", headers=AUTH)).json()
    total = everyone["totalResults"]
    assert total >= 3 and len(everyone["Resources"]) == total
    ids = [resource["id"] for resource in everyone["Resources"]]

    paged: list[str] = []
    start = 1
    while start <= total:
        page = await api.get(
            "/scim/v2/Users", params={"startIndex": start, "count": 2}, headers=AUTH
        )
        body = page.json()
        assert body["startIndex"] == start and body["totalResults"] == total
        assert body["itemsPerPage"] == len(body["Resources"]) <= 2
        paged += [resource["id"] for resource in body["Resources"]]
        start += 2
    assert paged == ids

    past_the_end = await api.get(
        "/scim/v2/Users", params={"startIndex": total + 1, "count": 2}, headers=AUTH
    )
    assert past_the_end.json()["Resources"] == []
    far_away = await api.get("/scim/v2/Users", params={"startIndex": 10**30}, headers=AUTH)
    assert far_away.status_code == 200 and far_away.json()["Resources"] == []


async def test_replace_changes_the_person_and_audits_before_and_after(api, scim_on, sessions):
    created = await create(api, externalId="before-id")
    name = f"scim.{secrets.token_hex(4)}"
    replaced = await api.put(
        f"/scim/v2/Users/{created['id']}",
        json=person(name, externalId="after-id", name={"formatted": "Renamed Person"})
        | {"displayName": None},
        headers=AUTH,
    )
    assert replaced.status_code == 200, replaced.text
    body = replaced.json()
    assert (body["userName"], body["displayName"], body["externalId"]) == (
        name,
        "Renamed Person",
        "after-id",
    )
    [updated] = events(sessions, name, "auth.user_updated")
    assert updated.before is not None and updated.before["username"] == created["userName"]
    assert updated.after is not None and updated.after["display_name"] == "Renamed Person"


async def test_a_deactivated_person_cannot_sign_in_and_keeps_their_history(
    api, scim_on, browser_like, oidc_provider, sessions
):
    sub, username = new_person(oidc_provider, ["finance-managers"])
    created = await create(api, user_name=username, externalId=sub)
    managers = await group_id(api, "finance-managers")
    added = await api.patch(
        f"/scim/v2/Groups/{managers}", json=members(created["id"]), headers=AUTH
    )
    assert added.status_code == 204, added.text
    # The first sign-in finds the account SCIM made (its externalId is the subject).
    assert (await browser_like.get(await to_callback(browser_like, sub))).status_code == 303
    found = user_row(sessions, username)
    assert found is not None and str(found[0].id) == created["id"]

    old_cookie = browser_like.cookies["bo_session"]
    deleted = await api.delete(f"/scim/v2/Users/{created['id']}", headers=AUTH)
    assert deleted.status_code == 204
    after = await api.get(f"/scim/v2/Users/{created['id']}", headers=AUTH)
    assert after.status_code == 200 and after.json()["active"] is False
    [deactivated] = events(sessions, username, "auth.user_deactivated")
    assert deactivated.before is not None and deactivated.before["active"] is True
    assert deactivated.after is not None and deactivated.after["active"] is False
    assert events(sessions, username, "auth.user_provisioned")  # history is kept

    assert (await browser_like.get("/tasks")).status_code != 200  # the open session ends
    browser_like.cookies.clear()
    refused = await browser_like.get(await to_callback(browser_like, sub))
    assert refused.status_code == 403 and "disabled" in refused.text

    [ended] = events(sessions, username, "auth.sign_ins_ended")
    assert ended.after is not None and ended.after["reason"] == "deactivated"
    reactivated = await api.patch(
        f"/scim/v2/Users/{created['id']}",
        json={
            "schemas": [PATCH_SCHEMA],
            "Operations": [{"op": "replace", "value": {"active": True}}],
        },
        headers=AUTH,
    )
    assert reactivated.status_code == 200 and reactivated.json()["active"] is True
    browser_like.cookies.set("bo_session", old_cookie)
    assert (await browser_like.get("/tasks")).status_code == 303  # the old sign-in stays ended


async def test_patch_active_deactivates_and_reactivates(api, scim_on, sessions):
    created = await create(api)
    # Azure sends the boolean as a string.
    for sent, active in (("False", False), (True, True)):
        patched = await api.patch(
            f"/scim/v2/Users/{created['id']}",
            json={
                "schemas": [PATCH_SCHEMA],
                "Operations": [{"op": "replace", "path": "active", "value": sent}],
            },
            headers=AUTH,
        )
        assert patched.status_code == 200, patched.text
        assert patched.json()["active"] is active
    assert len(events(sessions, str(created["userName"]), "auth.user_deactivated")) == 1
    assert len(events(sessions, str(created["userName"]), "auth.user_reactivated")) == 1


async def test_group_membership_gives_and_takes_roles(api, scim_on, sessions):
    created = await create(api)
    user_id, username = created["id"], str(created["userName"])
    clerks, analysts = await group_id(api, "finance-clerks"), await group_id(api, "risk-analysts")
    for group in (clerks, analysts):
        added = await api.patch(f"/scim/v2/Groups/{group}", json=members(user_id), headers=AUTH)
        assert added.status_code == 204, added.text
    found = user_row(sessions, username)
    assert found is not None
    assert found[1] == {"finance.clerk", "risk.analyst"} and found[0].department == "finance"

    group = (await api.get(f"/scim/v2/Groups/{clerks}", headers=AUTH)).json()
    assert group["displayName"] == "finance-clerks"
    assert {"value": user_id, "display": username} in [
        {k: m[k] for k in ("value", "display")} for m in group["members"]
    ]
    user = (await api.get(f"/scim/v2/Users/{user_id}", headers=AUTH)).json()
    assert [(g["value"], g["display"]) for g in user["groups"]] == [
        (clerks, "finance-clerks"),
        (analysts, "risk-analysts"),
    ]

    # Azure's form of a removal: the member in the path.
    removed = await api.patch(
        f"/scim/v2/Groups/{clerks}",
        json={
            "schemas": [PATCH_SCHEMA],
            "Operations": [{"op": "remove", "path": f'members[value eq "{user_id}"]'}],
        },
        headers=AUTH,
    )
    assert removed.status_code == 204, removed.text
    found = user_row(sessions, username)
    assert found is not None and found[1] == {"risk.analyst"}
    group = (await api.get(f"/scim/v2/Groups/{clerks}", headers=AUTH)).json()
    assert user_id not in [m["value"] for m in group["members"]]

    synced = events(sessions, username, "auth.roles_synced")
    assert [e.after["roles"] for e in synced if e.after is not None] == [
        ["finance.clerk"],
        ["finance.clerk", "risk.analyst"],
        ["risk.analyst"],
    ]
    assert synced[-1].before is not None
    assert synced[-1].before["roles"] == ["finance.clerk", "risk.analyst"]
    changed = events(sessions, username, "auth.groups_changed")
    assert [(e.before, e.after["groups"]) for e in changed if e.after is not None][-1] == (
        {"groups": ["finance-clerks", "risk-analysts"]},
        ["risk-analysts"],
    )


async def test_a_taken_user_name_is_refused_with_409_and_nothing_written(api, scim_on, sessions):
    taken = await create(api)
    before = writes(sessions)
    for user_name in (str(taken["userName"]), "ops.agent"):
        again = await api.post("/scim/v2/Users", json=person(user_name), headers=AUTH)
        assert_error(again, 409, "already taken")
        assert again.json()["scimType"] == "uniqueness"
    assert writes(sessions) == before


async def test_bad_requests_are_refused_with_400_and_nothing_written(api, scim_on, sessions):
    created = await create(api)
    traders = await group_id(api, "traders")
    before = writes(sessions)
    bad_filter = await api.get(
        "/scim/v2/Users", params={"filter": 'userName co "sky"'}, headers=AUTH
    )
    assert_error(bad_filter, 400, "filter")
    assert bad_filter.json()["scimType"] == "invalidFilter"
    assert_error(
        await api.get("/scim/v2/Users", params={"count": "many"}, headers=AUTH), 400, "whole"
    )
    no_name = person()
    del no_name["userName"]
    assert_error(await api.post("/scim/v2/Users", json=no_name, headers=AUTH), 400, "userName")
    assert_error(await api.post("/scim/v2/Users", content=b"{not json", headers=AUTH), 400, "JSON")
    # One unknown member refuses the whole change: the known one is not added either.
    both = members(created["id"])
    both["Operations"][0]["value"].append({"value": "999999999"})  # type: ignore[index]
    assert_error(
        await api.patch(f"/scim/v2/Groups/{traders}", json=both, headers=AUTH), 400, "no user"
    )
    assert writes(sessions) == before
    found = user_row(sessions, str(created["userName"]))
    assert found is not None and found[1] == set()


async def test_a_missing_or_wrong_token_is_refused_with_401(api, scim_on, sessions):
    """Nothing is created; each wrong token (not a missing one) is a security event."""
    users, events = writes(sessions)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": SCIM_TOKEN}):
        listed = await api.get("/scim/v2/Users", headers=headers)
        assert_error(listed, 401, "token")
        assert listed.headers["www-authenticate"].startswith("Bearer")
        assert_error(await api.post("/scim/v2/Users", json=person(), headers=headers), 401, "token")
    assert writes(sessions) == (users, events + 4)
    with sessions() as session:
        refused = session.execute(
            select(AuditEvent.action).order_by(AuditEvent.id.desc()).limit(4)
        ).scalars()
        assert set(refused) == {"scim.token_refused"}


async def test_scim_is_off_without_a_token_setting(api, sessions):
    before = writes(sessions)
    assert_error(await api.get("/scim/v2/Users", headers=AUTH), 404, "not enabled")
    assert_error(await api.post("/scim/v2/Users", json=person(), headers=AUTH), 404, "not enabled")
    assert writes(sessions) == before


async def test_a_sign_in_without_a_groups_claim_uses_the_groups_scim_gave(
    api, scim_on, browser_like, oidc_provider, sessions
):
    """Providers that provision over SCIM often send no groups in the ID token: then the
    SCIM groups decide, instead of the sign-in stripping every role."""
    sub, username = f"sub-{secrets.token_hex(6)}", f"pat.{secrets.token_hex(4)}"
    oidc_provider.set_person(sub, {"preferred_username": username, "name": "Pat NoClaim"})
    created = await create(api, user_name=username, externalId=sub)
    managers = await group_id(api, "finance-managers")
    added = await api.patch(
        f"/scim/v2/Groups/{managers}", json=members(created["id"]), headers=AUTH
    )
    assert added.status_code == 204, added.text

    assert (await browser_like.get(await to_callback(browser_like, sub))).status_code == 303
    assert (await browser_like.get("/tasks")).status_code == 200
    found = user_row(sessions, username)
    assert found is not None and found[1] == {"finance.manager"}


async def test_without_a_groups_claim_or_scim_groups_the_sign_in_is_refused(
    browser_like, oidc_provider, sessions
):
    sub, username = f"sub-{secrets.token_hex(6)}", f"pat.{secrets.token_hex(4)}"
    oidc_provider.set_person(sub, {"preferred_username": username, "name": "Pat Nobody"})
    refused = await browser_like.get(await to_callback(browser_like, sub))
    assert refused.status_code == 403 and "not in any group" in refused.text
    assert user_row(sessions, username) is None

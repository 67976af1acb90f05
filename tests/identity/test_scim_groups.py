"""SCIM groups as the identity provider keeps them: created, renamed, filled and emptied,
deleted; the roles of their members follow policies/identity.yaml by group name."""

from __future__ import annotations

import secrets

import httpx
from sqlalchemy import func, select

from core.db import SessionFactory
from core.models import AuditEvent, ScimGroup
from core.scim import GROUP_SCHEMA, PATCH_SCHEMA
from tests.identity.conftest import user_row
from tests.identity.test_scim import AUTH, assert_error, create, members, scim_on, writes

__all__ = ["scim_on"]  # the fixture, for pytest


def group_body(name: str, *member_ids: object, **extra: object) -> dict[str, object]:
    return {
        "schemas": [GROUP_SCHEMA],
        "displayName": name,
        "members": [{"value": member_id} for member_id in member_ids],
        **extra,
    }


async def new_group(api: httpx.AsyncClient, name: str, *member_ids: object) -> dict[str, object]:
    created = await api.post("/scim/v2/Groups", json=group_body(name, *member_ids), headers=AUTH)
    assert created.status_code == 201, created.text
    body: dict[str, object] = created.json()
    return body


def patch(*operations: dict[str, object]) -> dict[str, object]:
    return {"schemas": [PATCH_SCHEMA], "Operations": list(operations)}


def roles(sessions: SessionFactory, username: object) -> frozenset[str]:
    found = user_row(sessions, str(username))
    assert found is not None
    return found[1]


def group_events(sessions: SessionFactory, group_id: object) -> list[AuditEvent]:
    with sessions() as session:
        rows = session.execute(
            select(AuditEvent)
            .where(AuditEvent.stream == f"scim_group:{group_id}")
            .order_by(AuditEvent.seq)
        ).scalars()
        return list(rows)


def group_count(sessions: SessionFactory) -> int:
    with sessions() as session:
        return session.execute(select(func.count()).select_from(ScimGroup)).scalar_one()


async def test_a_created_group_gives_its_members_the_mapped_roles(api, scim_on, sessions):
    person = await create(api)
    created = await api.post(
        "/scim/v2/Groups",
        json=group_body("ops-leads", person["id"], externalId="entra-ops-leads"),
        headers=AUTH,
    )
    assert created.status_code == 201, created.text
    group = created.json()
    assert created.headers["location"].endswith(f"/scim/v2/Groups/{group['id']}")
    assert (group["displayName"], group["externalId"]) == ("ops-leads", "entra-ops-leads")
    assert [m["value"] for m in group["members"]] == [person["id"]]
    assert roles(sessions, person["userName"]) == {"operations.lead"}

    fetched = await api.get(f"/scim/v2/Groups/{group['id']}", headers=AUTH)
    assert fetched.status_code == 200 and fetched.json() == group
    by_external_id = await api.get(
        "/scim/v2/Groups", params={"filter": 'externalId eq "entra-ops-leads"'}, headers=AUTH
    )
    assert [g["id"] for g in by_external_id.json()["Resources"]] == [group["id"]]
    slim = await api.get(
        f"/scim/v2/Groups/{group['id']}", params={"excludedAttributes": "members"}, headers=AUTH
    )
    assert "members" not in slim.json() and slim.json()["displayName"] == "ops-leads"

    trail = group_events(sessions, group["id"])
    assert [e.action for e in trail] == ["scim.group_created", "scim.group_members_changed"]
    assert all(e.sensitivity == "security" and e.channel == "scim" for e in trail)
    assert trail[1].after == {"added": [person["userName"]], "removed": []}


async def test_groups_are_those_the_provider_created_mapped_or_not(api, scim_on, sessions):
    person = await create(api)
    unmapped = f"canteen-{secrets.token_hex(3)}"
    # A group the mapping does not know is stored and gives nothing: no error either.
    group = await new_group(api, unmapped, person["id"])
    assert roles(sessions, person["userName"]) == set()
    assert [
        g["value"]
        for g in (await api.get(f"/scim/v2/Users/{person['id']}", headers=AUTH)).json()["groups"]
    ] == [group["id"]]

    # Matched as providers do, whatever the case.
    found = await api.get(
        "/scim/v2/Groups", params={"filter": f'displayName eq "{unmapped.upper()}"'}, headers=AUTH
    )
    assert [g["id"] for g in found.json()["Resources"]] == [group["id"]]
    # A group of identity.yaml that the provider never created is not listed.
    never = await api.get(
        "/scim/v2/Groups", params={"filter": 'displayName eq "trading-leads"'}, headers=AUTH
    )
    assert never.json()["totalResults"] == 0

    listing = (await api.get("/scim/v2/Groups", params={"count": 1}, headers=AUTH)).json()
    assert listing["totalResults"] == group_count(sessions) and listing["itemsPerPage"] == 1


async def test_put_replaces_name_and_members_and_a_rename_changes_roles(api, scim_on, sessions):
    stays, leaves = await create(api), await create(api)
    staging = f"risk-staging-{secrets.token_hex(3)}"
    group = await new_group(api, staging, stays["id"], leaves["id"])
    assert roles(sessions, stays["userName"]) == set()

    replaced = await api.put(
        f"/scim/v2/Groups/{group['id']}", json=group_body("risk-leads", stays["id"]), headers=AUTH
    )
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["displayName"] == "risk-leads"
    assert [m["value"] for m in replaced.json()["members"]] == [stays["id"]]
    assert roles(sessions, stays["userName"]) == {"risk.lead"}
    assert roles(sessions, leaves["userName"]) == set()
    renamed = [e for e in group_events(sessions, group["id"]) if e.action == "scim.group_renamed"]
    assert [(e.before, e.after) for e in renamed] == [
        (
            {"display_name": staging, "external_id": None},
            {"display_name": "risk-leads", "external_id": None},
        )
    ]


async def test_patch_adds_replaces_and_removes_members_and_renames(api, scim_on, sessions):
    one, two = await create(api), await create(api)
    group = await new_group(api, f"crm-{secrets.token_hex(3)}")
    path = f"/scim/v2/Groups/{group['id']}"

    # Okta renames with the id alongside; Entra adds with a path.
    renamed = await api.patch(
        path,
        json=patch(
            {"op": "replace", "value": {"id": group["id"], "displayName": "crm-managers"}},
            {"op": "add", "path": "members", "value": [{"value": one["id"]}, {"value": two["id"]}]},
        ),
        headers=AUTH,
    )
    assert renamed.status_code == 204, renamed.text
    assert roles(sessions, one["userName"]) == roles(sessions, two["userName"]) == {"crm.manager"}

    # Entra's removal: path members, the members in value.
    removed = await api.patch(
        path,
        json=patch({"op": "remove", "path": "members", "value": [{"value": one["id"]}]}),
        headers=AUTH,
    )
    assert removed.status_code == 204, removed.text
    # Out of their last mapped group: no roles, but still an active account.
    found = user_row(sessions, str(one["userName"]))
    assert found is not None and found[1] == set() and found[0].is_active

    replaced = await api.patch(
        path,
        json=patch({"op": "replace", "path": "members", "value": [{"value": one["id"]}]}),
        headers=AUTH,
    )
    assert replaced.status_code == 204, replaced.text
    members_now = (await api.get(path, headers=AUTH)).json()["members"]
    assert [m["value"] for m in members_now] == [one["id"]]
    assert roles(sessions, two["userName"]) == set()

    emptied = await api.patch(path, json=patch({"op": "remove", "path": "members"}), headers=AUTH)
    assert emptied.status_code == 204
    assert (await api.get(path, headers=AUTH)).json()["members"] == []
    assert roles(sessions, one["userName"]) == set()


async def test_deleting_a_group_recomputes_its_members_roles(api, scim_on, sessions):
    person = await create(api)
    officers = await new_group(api, "compliance-officers", person["id"])
    other = await new_group(api, f"ops-agents-{secrets.token_hex(3)}", person["id"])
    renamed = await api.patch(
        f"/scim/v2/Groups/{other['id']}",
        json=patch({"op": "replace", "path": "displayName", "value": "ops-agents"}),
        headers=AUTH,
    )
    assert renamed.status_code == 204, renamed.text
    assert roles(sessions, person["userName"]) == {"compliance.officer", "operations.agent"}

    deleted = await api.delete(f"/scim/v2/Groups/{officers['id']}", headers=AUTH)
    assert deleted.status_code == 204
    assert_error(await api.get(f"/scim/v2/Groups/{officers['id']}", headers=AUTH), 404, "no group")
    assert roles(sessions, person["userName"]) == {"operations.agent"}
    [gone] = [e for e in group_events(sessions, officers["id"]) if e.action == "scim.group_deleted"]
    assert gone.before is not None and gone.before["members"] == [person["userName"]]
    # The name is free again.
    again = await new_group(api, "compliance-officers")
    assert again["id"] != officers["id"]


async def test_bad_group_requests_are_refused_and_write_nothing(api, scim_on, sessions):
    person = await create(api)
    taken = await new_group(api, f"taken-{secrets.token_hex(3)}", person["id"])
    path = f"/scim/v2/Groups/{taken['id']}"
    before, groups_before = writes(sessions), group_count(sessions)

    twin = await api.post(
        "/scim/v2/Groups", json=group_body(str(taken["displayName"]).upper()), headers=AUTH
    )
    assert_error(twin, 409, "already")
    assert twin.json()["scimType"] == "uniqueness"
    no_name = group_body("x")
    del no_name["displayName"]
    assert_error(await api.post("/scim/v2/Groups", json=no_name, headers=AUTH), 400, "displayName")
    stranger = await api.post(
        "/scim/v2/Groups", json=group_body("ops-leads-2", "999999999"), headers=AUTH
    )
    assert_error(stranger, 400, "no user")
    assert stranger.json()["scimType"] == "noTarget"
    bad_filter = await api.get("/scim/v2/Groups", params={"filter": 'members eq "1"'}, headers=AUTH)
    assert_error(bad_filter, 400, "filter")
    assert bad_filter.json()["scimType"] == "invalidFilter"
    assert_error(await api.get("/scim/v2/Groups/not-a-number", headers=AUTH), 404, "no group")

    refusals: list[tuple[dict[str, object], str]] = [
        ({"op": "replace", "path": "id", "value": "77"}, "mutability"),
        ({"op": "replace", "path": "meta", "value": {}}, "mutability"),
        ({"op": "add", "path": "owners", "value": [{"value": "1"}]}, "invalidPath"),
        ({"op": "remove", "path": "displayName"}, "invalidValue"),
        ({"op": "remove"}, "noTarget"),
        ({"op": "move", "path": "members"}, "invalidSyntax"),
        ({"op": "add", "path": "members", "value": [{"display": "no id"}]}, "invalidValue"),
    ]
    for operation, scim_type in refusals:
        refused = await api.patch(path, json=patch(operation), headers=AUTH)
        assert refused.status_code == 400, (operation, refused.text)
        assert refused.json()["scimType"] == scim_type, operation
    # The whole PatchOp is refused: the valid removal before the bad one is not applied.
    mixed = patch(
        {"op": "remove", "path": f'members[value eq "{person["id"]}"]'},
        {"op": "add", "path": "members", "value": [{"value": "999999999"}]},
    )
    assert_error(await api.patch(path, json=mixed, headers=AUTH), 400, "no user")
    assert (writes(sessions), group_count(sessions)) == (before, groups_before)
    assert [m["value"] for m in (await api.get(path, headers=AUTH)).json()["members"]] == [
        person["id"]
    ]


async def test_members_patch_helper_still_works_on_stored_groups(api, scim_on, sessions):
    person = await create(api)
    group = await new_group(api, "finance-directors")
    added = await api.patch(
        f"/scim/v2/Groups/{group['id']}", json=members(person["id"]), headers=AUTH
    )
    assert added.status_code == 204
    assert roles(sessions, person["userName"]) == {"finance.director"}

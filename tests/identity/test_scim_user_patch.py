"""PATCH on SCIM users as Entra ID and Okta send it (RFC 7644 3.5.2), and the filters they
find people with."""

from __future__ import annotations

import secrets

from core.scim import ENTERPRISE_SCHEMA, PATCH_SCHEMA, USER_SCHEMA
from tests.identity.conftest import events
from tests.identity.test_scim import AUTH, assert_error, create, scim_on, writes

__all__ = ["scim_on"]  # the fixture, for pytest


def patch(*operations: dict[str, object]) -> dict[str, object]:
    return {"schemas": [PATCH_SCHEMA], "Operations": list(operations)}


async def test_patch_with_paths_changes_the_profile_in_one_audited_update(api, scim_on, sessions):
    created = await create(api)
    path = f"/scim/v2/Users/{created['id']}"
    patched = await api.patch(
        path,
        json=patch(
            {"op": "replace", "path": "name.GivenName", "value": "Robin"},
            {"op": "add", "path": "name.familyName", "value": "Okafor"},
            {"op": "add", "path": 'emails[type eq "work"].value', "value": "Robin@Example.com"},
            {"op": "replace", "path": "TITLE", "value": "Fraud analyst"},
            {"op": "replace", "path": "externalId", "value": "entra-42"},
            {"op": "replace", "path": f"{ENTERPRISE_SCHEMA}:department", "value": "Finance"},
            {"op": "replace", "path": f"{USER_SCHEMA}:displayName", "value": "Robin O."},
            {"op": "replace", "value": {"id": created["id"], "name.formatted": "Robin O."}},
        ),
        headers=AUTH,
    )
    assert patched.status_code == 200, patched.text
    body = patched.json()
    assert body["name"] == {"formatted": "Robin O.", "givenName": "Robin", "familyName": "Okafor"}
    assert body["displayName"] == "Robin O." and body["title"] == "Fraud analyst"
    assert body["emails"] == [{"type": "work", "value": "Robin@Example.com"}]
    assert body["externalId"] == "entra-42"
    assert body[ENTERPRISE_SCHEMA]["department"] == "finance"
    assert (await api.get(path, headers=AUTH)).json() == body

    [updated] = events(sessions, str(created["userName"]), "auth.user_updated")
    assert updated.before is not None and updated.after is not None
    assert (updated.before["title"], updated.after["title"]) == (None, "Fraud analyst")
    assert updated.after["emails"] == [{"type": "work", "value": "Robin@Example.com"}]

    # Found by the address, whatever its case, and by externalId.
    for search in ('emails.value eq "robin@example.COM"', 'externalId eq "entra-42"'):
        found = await api.get("/scim/v2/Users", params={"filter": search}, headers=AUTH)
        assert [r["id"] for r in found.json()["Resources"]] == [created["id"]], search

    removed = await api.patch(
        path,
        json=patch(
            {"op": "remove", "path": "title"},
            {"op": "remove", "path": 'emails[type eq "work"]'},
            {"op": "replace", "path": "name.familyName", "value": "Okafor-Lee"},
        ),
        headers=AUTH,
    )
    assert removed.status_code == 200, removed.text
    assert "title" not in removed.json() and "emails" not in removed.json()
    assert removed.json()["name"]["familyName"] == "Okafor-Lee"


async def test_entra_style_patch_without_path_and_string_booleans(api, scim_on, sessions):
    created = await create(api)
    username = str(created["userName"])
    deactivated = await api.patch(
        f"/scim/v2/Users/{created['id']}",
        json=patch(
            {
                "op": "Replace",
                "value": {
                    "displayName": "Sam Entra",
                    "name.givenName": "Sam",
                    "active": "False",
                    ENTERPRISE_SCHEMA: {"department": "risk"},
                },
            }
        ),
        headers=AUTH,
    )
    assert deactivated.status_code == 200, deactivated.text
    body = deactivated.json()
    assert (body["active"], body["displayName"], body["name"]["givenName"]) == (
        False,
        "Sam Entra",
        "Sam",
    )
    assert body[ENTERPRISE_SCHEMA]["department"] == "risk"
    # One change, one event: a deactivation that carries the rest of the change with it.
    [event] = events(sessions, username, "auth.user_deactivated")
    assert event.after is not None and event.after["display_name"] == "Sam Entra"
    assert events(sessions, username, "auth.user_updated") == []

    emails = [{"value": "sam@example.com", "primary": True}, {"value": "s@example.org"}]
    again = await api.patch(
        f"/scim/v2/Users/{created['id']}",
        json=patch(
            {"op": "add", "path": "emails", "value": emails},
            {"op": "remove", "path": "emails", "value": [{"value": "S@EXAMPLE.ORG"}]},
            {"op": "replace", "path": "active", "value": "True"},
        ),
        headers=AUTH,
    )
    assert again.status_code == 200, again.text
    assert again.json()["emails"] == [{"value": "sam@example.com", "primary": True}]
    assert again.json()["active"] is True
    assert len(events(sessions, username, "auth.user_reactivated")) == 1

    unchanged = await api.patch(
        f"/scim/v2/Users/{created['id']}",
        json=patch({"op": "replace", "path": "displayName", "value": "Sam Entra"}),
        headers=AUTH,
    )
    assert unchanged.status_code == 200
    assert events(sessions, username, "auth.user_updated") == []  # nothing changed


async def test_a_patch_cannot_take_a_user_name_that_is_taken(api, scim_on, sessions):
    first, second = await create(api), await create(api)
    before = writes(sessions)
    taken = await api.patch(
        f"/scim/v2/Users/{second['id']}",
        json=patch({"op": "replace", "path": "userName", "value": first["userName"]}),
        headers=AUTH,
    )
    assert_error(taken, 409, "already taken")
    assert writes(sessions) == before
    renamed = f"scim.{secrets.token_hex(4)}"
    moved = await api.patch(
        f"/scim/v2/Users/{second['id']}",
        json=patch({"op": "replace", "path": "userName", "value": renamed}),
        headers=AUTH,
    )
    assert moved.status_code == 200 and moved.json()["userName"] == renamed


async def test_bad_user_patches_are_refused_with_their_scim_type_and_write_nothing(
    api, scim_on, sessions
):
    created = await create(api, emails=[{"value": "only@example.com", "type": "work"}])
    path = f"/scim/v2/Users/{created['id']}"
    before = writes(sessions)
    refusals: list[tuple[dict[str, object], str]] = [
        ({"op": "replace", "path": "id", "value": "7"}, "mutability"),
        ({"op": "add", "path": "groups", "value": [{"value": "1"}]}, "mutability"),
        ({"op": "replace", "path": "meta.created", "value": "2020"}, "mutability"),
        ({"op": "replace", "path": "nickName", "value": "Sky"}, "invalidPath"),
        ({"op": "replace", "value": {"phoneNumbers": [{"value": "1"}]}}, "invalidPath"),
        ({"op": "replace", "path": f"{ENTERPRISE_SCHEMA}:manager", "value": "x"}, "invalidPath"),
        ({"op": "replace", "path": 'emails[type eq "home"].value', "value": "a@b"}, "noTarget"),
        ({"op": "replace", "path": "emails[display eq 1]", "value": "a@b"}, "invalidPath"),
        ({"op": "remove"}, "noTarget"),
        ({"op": "remove", "path": "userName"}, "invalidValue"),
        ({"op": "remove", "path": "active"}, "invalidValue"),
        ({"op": "replace", "path": "active", "value": "maybe"}, "invalidValue"),
        ({"op": "replace", "path": "displayName", "value": 42}, "invalidValue"),
        ({"op": "replace", "path": "title", "value": "x" * 500}, "invalidValue"),
        ({"op": "replace", "path": "title"}, "invalidValue"),
        (
            {"op": "add", "path": "emails", "value": [{"value": "a@b", "primary": True}] * 2},
            "invalidValue",
        ),
        ({"op": "copy", "path": "title", "value": "x"}, "invalidSyntax"),
    ]
    for operation, scim_type in refusals:
        refused = await api.patch(path, json=patch(operation), headers=AUTH)
        assert refused.status_code == 400, (operation, refused.text)
        assert refused.json()["scimType"] == scim_type, (operation, refused.json())
    # Addresses that are not objects, then an operation on the addresses: refused, no 500.
    follow_ups: list[dict[str, object]] = [
        {"op": "add", "path": "emails", "value": [{"value": "a@b.c"}]},
        {"op": "remove", "path": "emails", "value": [{"value": "a@b.c"}]},
    ]
    for follow_up in follow_ups:
        not_objects: dict[str, object] = {"op": "replace", "path": "emails", "value": ["x"]}
        refused = await api.patch(path, json=patch(not_objects, follow_up), headers=AUTH)
        assert refused.status_code == 400, (follow_up, refused.text)
    assert_error(
        await api.patch(path, json={"Operations": [{"op": "remove"}]}, headers=AUTH),
        400,
        "schemas",
    )
    # A good operation next to a bad one: neither is applied.
    mixed = patch(
        {"op": "replace", "path": "title", "value": "Lead"},
        {"op": "replace", "path": "userName", "value": ""},
    )
    assert_error(await api.patch(path, json=mixed, headers=AUTH), 400, "userName")
    assert writes(sessions) == before
    assert "title" not in (await api.get(path, headers=AUTH)).json()
    bad_filter = await api.get(
        "/scim/v2/Users", params={"filter": 'emails.type eq "work"'}, headers=AUTH
    )
    assert bad_filter.status_code == 400 and bad_filter.json()["scimType"] == "invalidFilter"
    for listing, attribute in (
        ("Users", "userName"),
        ("Users", "emails.value"),
        ("Groups", "displayName"),
    ):
        nul = await api.get(
            f"/scim/v2/{listing}", params={"filter": f'{attribute} eq "a\\u0000b"'}, headers=AUTH
        )
        assert nul.status_code == 400 and nul.json()["scimType"] == "invalidFilter", nul.text

"""What a provider learns before it provisions: the service provider configuration, the
resource types and the schemas (RFC 7644 4), behind the same token as the rest."""

from __future__ import annotations

from core.scim import ENTERPRISE_SCHEMA, GROUP_SCHEMA, USER_SCHEMA
from tests.identity.test_scim import AUTH, assert_error, scim_on

__all__ = ["scim_on"]  # the fixture, for pytest


async def test_the_configuration_says_what_is_supported(api, scim_on):
    answer = await api.get("/scim/v2/ServiceProviderConfig", headers=AUTH)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/scim+json")
    config = answer.json()
    supported = {
        feature: config[feature]["supported"]
        for feature in ("patch", "bulk", "filter", "changePassword", "sort", "etag")
    }
    assert supported == {
        "patch": True,
        "bulk": False,
        "filter": True,
        "changePassword": False,
        "sort": False,
        "etag": False,
    }
    assert config["filter"]["maxResults"] == 200
    assert [s["type"] for s in config["authenticationSchemes"]] == ["oauthbearertoken"]
    # maxResults is what a page really holds at most.
    page = await api.get("/scim/v2/Users", params={"count": 10_000}, headers=AUTH)
    assert page.json()["itemsPerPage"] <= config["filter"]["maxResults"]


async def test_resource_types_point_at_the_endpoints_and_schemas(api, scim_on):
    listing = (await api.get("/scim/v2/ResourceTypes", headers=AUTH)).json()
    by_name = {r["name"]: r for r in listing["Resources"]}
    assert listing["totalResults"] == 2
    assert (by_name["User"]["endpoint"], by_name["User"]["schema"]) == ("/Users", USER_SCHEMA)
    assert by_name["User"]["schemaExtensions"] == [{"schema": ENTERPRISE_SCHEMA, "required": False}]
    assert (by_name["Group"]["endpoint"], by_name["Group"]["schema"]) == ("/Groups", GROUP_SCHEMA)
    one = await api.get("/scim/v2/ResourceTypes/Group", headers=AUTH)
    assert one.status_code == 200 and one.json() == by_name["Group"]
    assert_error(await api.get("/scim/v2/ResourceTypes/Device", headers=AUTH), 404, "Device")


async def test_schemas_list_exactly_the_attributes_a_patch_accepts(api, scim_on):
    listing = (await api.get("/scim/v2/Schemas", headers=AUTH)).json()
    by_id = {s["id"]: s for s in listing["Resources"]}
    assert set(by_id) == {USER_SCHEMA, ENTERPRISE_SCHEMA, GROUP_SCHEMA}
    user = {a["name"]: a for a in by_id[USER_SCHEMA]["attributes"]}
    assert set(user) == {"userName", "name", "displayName", "title", "emails", "active", "groups"}
    assert user["userName"]["required"] and user["userName"]["uniqueness"] == "server"
    assert user["groups"]["mutability"] == "readOnly"
    assert {a["name"] for a in user["name"]["subAttributes"]} == {
        "formatted",
        "givenName",
        "familyName",
    }
    assert [a["name"] for a in by_id[ENTERPRISE_SCHEMA]["attributes"]] == ["department"]
    group = {a["name"]: a for a in by_id[GROUP_SCHEMA]["attributes"]}
    assert set(group) == {"displayName", "members"} and group["displayName"]["required"]
    one = await api.get(f"/scim/v2/Schemas/{USER_SCHEMA}", headers=AUTH)
    assert one.status_code == 200 and one.json() == by_id[USER_SCHEMA]
    assert_error(await api.get("/scim/v2/Schemas/urn:nothing", headers=AUTH), 404, "no schema")


async def test_discovery_needs_the_token_and_scim_on(api, scim_on):
    for path in ("/scim/v2/ServiceProviderConfig", "/scim/v2/Schemas", "/scim/v2/ResourceTypes"):
        assert_error(await api.get(path), 401, "token")


async def test_discovery_is_off_with_scim(api):
    assert_error(await api.get("/scim/v2/ServiceProviderConfig", headers=AUTH), 404, "not enabled")

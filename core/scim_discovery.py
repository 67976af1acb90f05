"""What this SCIM service supports, as a provider discovers it (RFC 7643 5-7, RFC 7644 4):
the service provider configuration, the resource types and their schemas.

Kept truthful: every attribute listed here is one core.scim reads and writes (anything
else in a PATCH is refused as an invalidPath), and every feature it claims is one the
endpoints implement.
"""

from __future__ import annotations

from typing import Any

from core.scim import (
    ENTERPRISE_SCHEMA,
    GROUP_SCHEMA,
    LIST_SCHEMA,
    MAX_PAGE,
    USER_SCHEMA,
    ScimError,
)

CONFIG_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"
RESOURCE_TYPE_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:ResourceType"
SCHEMA_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Schema"


def _attribute(
    name: str,
    description: str,
    kind: str = "string",
    *,
    required: bool = False,
    multi_valued: bool = False,
    mutability: str = "readWrite",
    uniqueness: str = "none",
    sub_attributes: list[dict[str, Any]] | None = None,
    reference_types: list[str] | None = None,
) -> dict[str, Any]:
    attribute: dict[str, Any] = {
        "name": name,
        "type": kind,
        "multiValued": multi_valued,
        "description": description,
        "required": required,
        "caseExact": False,
        "mutability": mutability,
        "returned": "default",
        "uniqueness": uniqueness,
    }
    if sub_attributes is not None:
        attribute["subAttributes"] = sub_attributes
    if reference_types is not None:
        attribute["referenceTypes"] = reference_types
    return attribute


def _user_attributes() -> list[dict[str, Any]]:
    return [
        _attribute(
            "userName",
            "The name the person signs in with; unique among all accounts here.",
            required=True,
            uniqueness="server",
        ),
        _attribute(
            "name",
            "The person's name.",
            "complex",
            sub_attributes=[
                _attribute("formatted", "The full name; the same value as displayName."),
                _attribute("givenName", "Given name."),
                _attribute("familyName", "Family name."),
            ],
        ),
        _attribute(
            "displayName",
            "The name shown in the backoffice (name.formatted, or given and family name, "
            "or userName when not sent).",
        ),
        _attribute("title", "Job title."),
        _attribute(
            "emails",
            "E-mail addresses; at most one primary.",
            "complex",
            multi_valued=True,
            sub_attributes=[
                _attribute("value", "The address.", required=True),
                _attribute("type", "work, home, other, or the provider's own label."),
                _attribute("primary", "The preferred address.", "boolean"),
            ],
        ),
        _attribute(
            "active",
            "False: sign-in is refused and open sessions end; the account and its audit "
            'history stay (DELETE does the same). "True"/"False" strings are accepted in '
            "PATCH.",
            "boolean",
        ),
        _attribute(
            "groups",
            "The groups the person is in; change them through the Group resource.",
            "complex",
            multi_valued=True,
            mutability="readOnly",
            sub_attributes=[
                _attribute("value", "The group's id.", mutability="readOnly"),
                _attribute(
                    "$ref",
                    "The group's URI.",
                    "reference",
                    mutability="readOnly",
                    reference_types=["Group"],
                ),
                _attribute("display", "The group's displayName.", mutability="readOnly"),
            ],
        ),
    ]


def _enterprise_attributes() -> list[dict[str, Any]]:
    return [
        _attribute(
            "department",
            "One of the backoffice's departments, by key or label; another value is ignored. "
            "Applied only while the person has no role: their groups decide it otherwise.",
        )
    ]


def _group_attributes() -> list[dict[str, Any]]:
    return [
        _attribute(
            "displayName",
            "The group's name; policies/identity.yaml decides by this name what roles its "
            "members get (a name it does not list gives none).",
            required=True,
            uniqueness="server",
        ),
        _attribute(
            "members",
            "The people in the group (Users only).",
            "complex",
            multi_valued=True,
            sub_attributes=[
                _attribute("value", "The member's id.", mutability="immutable"),
                _attribute(
                    "$ref",
                    "The member's URI.",
                    "reference",
                    mutability="immutable",
                    reference_types=["User"],
                ),
                _attribute("display", "The member's userName.", mutability="readOnly"),
            ],
        ),
    ]


_SCHEMAS: dict[str, tuple[str, str, Any]] = {
    USER_SCHEMA: ("User", "People of single sign-on", _user_attributes),
    ENTERPRISE_SCHEMA: ("EnterpriseUser", "Enterprise User", _enterprise_attributes),
    GROUP_SCHEMA: ("Group", "Groups, mapped to roles by displayName", _group_attributes),
}
_RESOURCE_TYPES = {
    "User": ("/Users", USER_SCHEMA, [ENTERPRISE_SCHEMA], "People of single sign-on"),
    "Group": ("/Groups", GROUP_SCHEMA, [], "Groups of the identity provider"),
}


def service_provider_config(base_url: str) -> dict[str, Any]:
    return {
        "schemas": [CONFIG_SCHEMA],
        "patch": {"supported": True},
        "bulk": {"supported": False, "maxOperations": 0, "maxPayloadSize": 0},
        "filter": {"supported": True, "maxResults": MAX_PAGE},
        "changePassword": {"supported": False},
        "sort": {"supported": False},
        "etag": {"supported": False},
        "authenticationSchemes": [
            {
                "type": "oauthbearertoken",
                "name": "OAuth Bearer Token",
                "description": "The SCIM_TOKEN of this deployment, as a bearer token.",
                "primary": True,
            }
        ],
        "meta": {
            "resourceType": "ServiceProviderConfig",
            "location": f"{base_url}/ServiceProviderConfig",
        },
    }


def schema(schema_id: str, base_url: str) -> dict[str, Any]:
    if schema_id not in _SCHEMAS:
        raise ScimError(404, f"no schema {schema_id}")
    name, description, attributes = _SCHEMAS[schema_id]
    return {
        "schemas": [SCHEMA_SCHEMA],
        "id": schema_id,
        "name": name,
        "description": description,
        "attributes": attributes(),
        "meta": {"resourceType": "Schema", "location": f"{base_url}/Schemas/{schema_id}"},
    }


def resource_type(name: str, base_url: str) -> dict[str, Any]:
    if name not in _RESOURCE_TYPES:
        raise ScimError(404, f"no resource type {name}")
    endpoint, core_schema, extensions, description = _RESOURCE_TYPES[name]
    return {
        "schemas": [RESOURCE_TYPE_SCHEMA],
        "id": name,
        "name": name,
        "endpoint": endpoint,
        "description": description,
        "schema": core_schema,
        "schemaExtensions": [{"schema": ext, "required": False} for ext in extensions],
        "meta": {"resourceType": "ResourceType", "location": f"{base_url}/ResourceTypes/{name}"},
    }


def listing(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "schemas": [LIST_SCHEMA],
        "totalResults": len(resources),
        "startIndex": 1,
        "itemsPerPage": len(resources),
        "Resources": resources,
    }


def schemas(base_url: str) -> dict[str, Any]:
    return listing([schema(schema_id, base_url) for schema_id in _SCHEMAS])


def resource_types(base_url: str) -> dict[str, Any]:
    return listing([resource_type(name, base_url) for name in _RESOURCE_TYPES])

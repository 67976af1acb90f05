"""SCIM 2.0 provisioning (RFC 7643/7644): the identity provider creates, updates and
deactivates the people of single sign-on and puts them in the groups of
policies/identity.yaml.

SCIM people are single sign-on people (auth_source "oidc"): they have no password here
and sign in through the provider. Their externalId is stored as the provider's subject
(`issuer|externalId`), so their first sign-in finds the account SCIM made. Local and
directory (LDAP) accounts are not SCIM's to see or change.

Group membership is not stored apart from roles: a person is in a group when they hold
every role the group gives, and adding or removing a member recomputes their roles with
the same mapping single sign-on uses (core.identity). Nothing is ever deleted: DELETE
deactivates, so the audit trail keeps a live subject.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.auth import security_event
from core.identity import MAX_USERNAME, NO_LOCAL_PASSWORD, OIDC, apply_assignment
from core.models import User, UserRole
from core.repositories import users as users_repo
from policies.identity import IdentityMap
from workflows.contracts import Origin

USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE_SCHEMA = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
LIST_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
PATCH_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
ERROR_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:Error"
MEDIA_TYPE = "application/scim+json"
# The source recorded on accounts SCIM makes: people of the single sign-on provider.
SCIM_SOURCE = OIDC
MAX_PAGE = 200
MAX_DISPLAY_NAME = 128
MAX_EXTERNAL_ID = 256
_FILTER = re.compile(r'^\s*(\w+)\s+eq\s+"((?:[^"\\]|\\.)*)"\s*$', re.IGNORECASE)
# Azure's way to remove one member: path `members[value eq "42"]`.
_MEMBER_PATH = re.compile(r'^members\[\s*value\s+eq\s+"([^"]*)"\s*\]$', re.IGNORECASE)


class ScimError(Exception):
    """A refusal in SCIM's error schema; nothing has been written."""

    def __init__(self, status: int, detail: str, scim_type: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.scim_type = scim_type

    def body(self) -> dict[str, object]:
        body: dict[str, object] = {
            "schemas": [ERROR_SCHEMA],
            "status": str(self.status),
            "detail": self.detail,
        }
        if self.scim_type is not None:
            body["scimType"] = self.scim_type
        return body


def _bad(detail: str, scim_type: str = "invalidValue") -> ScimError:
    return ScimError(400, detail, scim_type)


@dataclass(frozen=True)
class Provisioner:
    """What SCIM acts with: the group mapping, the departments, the provider's issuer
    (to store externalId as a subject) and where the calls come from."""

    mapping: IdentityMap
    departments: Mapping[str, str]
    issuer: str | None
    origin: Origin


@dataclass(frozen=True)
class Page:
    total: int
    start_index: int
    items: list[Any]


@dataclass(frozen=True)
class UserFields:
    user_name: str
    display_name: str
    active: bool
    external_id: str | None
    department: str | None


# --- reading -----------------------------------------------------------------------------


def paging(start_index: str | None, count: str | None) -> tuple[int, int]:
    """startIndex (1-based, below 1 means 1) and count (0 to MAX_PAGE), RFC 7644 3.4.2.4."""
    try:
        start = int(start_index) if start_index is not None else 1
        size = int(count) if count is not None else MAX_PAGE
    except ValueError:
        raise _bad("startIndex and count must be whole numbers") from None
    # Clamped so that a huge startIndex is an empty page, not a database overflow.
    return min(max(start, 1), 2**31), min(max(size, 0), MAX_PAGE)


def parse_filter(text: str | None, attribute: str) -> str | None:
    """The value of `<attribute> eq "value"`, the one filter supported; None without one."""
    if text is None:
        return None
    match = _FILTER.match(text)
    if match is None or match.group(1).lower() != attribute.lower():
        raise _bad(f'only the filter {attribute} eq "value" is supported', "invalidFilter")
    try:
        value = json.loads(f'"{match.group(2)}"')
    except ValueError:
        raise _bad("the filter's value is not a valid string", "invalidFilter") from None
    return str(value)


def _scim_users() -> Any:
    return select(User).where(User.auth_source == SCIM_SOURCE)


def list_users(session: Session, user_name: str | None, start: int, count: int) -> Page:
    query = _scim_users()
    if user_name is not None:
        query = query.where(User.username == user_name)
    total = session.execute(select(func.count()).select_from(query.subquery())).scalar_one()
    rows = session.execute(query.order_by(User.id).offset(start - 1).limit(count)).scalars()
    return Page(total, start, list(rows))


def user_by_id(session: Session, user_id: str, *, for_update: bool = False) -> User:
    """A SCIM person by id; 404 for anyone else (local and directory accounts too)."""
    number = int(user_id) if user_id.isascii() and user_id.isdigit() else 0
    query = _scim_users().where(User.id == number)
    if for_update:
        query = query.with_for_update()
    user = session.execute(query).scalar_one_or_none() if 0 < number < 2**63 else None
    if user is None:
        raise ScimError(404, f"no user with id {user_id}")
    return user


def groups_of(mapping: IdentityMap, roles: frozenset[str]) -> list[str]:
    """The mapped groups a person is in: those whose every role they hold."""
    return [name for name, g in mapping.mapping.groups.items() if set(g.roles) <= roles]


def roles_by_user(session: Session, user_ids: Sequence[int] | None = None) -> dict[int, set[str]]:
    query = select(UserRole.user_id, UserRole.role).join(User, User.id == UserRole.user_id)
    query = query.where(User.auth_source == SCIM_SOURCE)
    if user_ids is not None:
        query = query.where(UserRole.user_id.in_(user_ids))
    held: dict[int, set[str]] = {}
    for user_id, role in session.execute(query):
        held.setdefault(user_id, set()).add(role)
    return held


def external_id_of(user: User) -> str | None:
    """The provider's id for the person, without the issuer it is stored with."""
    if user.external_id is None:
        return None
    return user.external_id.partition("|")[2] or None


def user_resource(
    user: User, roles: frozenset[str], mapping: IdentityMap, base_url: str
) -> dict[str, object]:
    resource: dict[str, object] = {
        "schemas": [USER_SCHEMA, ENTERPRISE_SCHEMA],
        "id": str(user.id),
        "userName": user.username,
        "displayName": user.display_name,
        "name": {"formatted": user.display_name},
        "active": user.is_active,
        "groups": [
            {"value": name, "display": name, "$ref": f"{base_url}/Groups/{name}"}
            for name in groups_of(mapping, roles)
        ],
        ENTERPRISE_SCHEMA: {"department": user.department},
        "meta": {
            "resourceType": "User",
            "created": user.created_at.isoformat(),
            "location": f"{base_url}/Users/{user.id}",
        },
    }
    external_id = external_id_of(user)
    if external_id is not None:
        resource["externalId"] = external_id
    return resource


def group_names(mapping: IdentityMap, display_name: str | None) -> list[str]:
    names = list(mapping.mapping.groups)
    return [n for n in names if n == display_name] if display_name is not None else names


def group_by_id(mapping: IdentityMap, group_id: str) -> str:
    if group_id not in mapping.mapping.groups:
        raise ScimError(404, f"no group with id {group_id}")
    return group_id


def group_resources(
    session: Session, mapping: IdentityMap, names: list[str], base_url: str
) -> list[dict[str, object]]:
    held = roles_by_user(session)
    usernames = users_repo.usernames(session, held)
    resources: list[dict[str, object]] = []
    for name in names:
        wanted = set(mapping.mapping.groups[name].roles)
        members = sorted(user_id for user_id, roles in held.items() if wanted <= roles)
        resources.append(
            {
                "schemas": [GROUP_SCHEMA],
                "id": name,
                "displayName": name,
                "members": [
                    {
                        "value": str(user_id),
                        "display": usernames[user_id],
                        "$ref": f"{base_url}/Users/{user_id}",
                    }
                    for user_id in members
                ],
                "meta": {"resourceType": "Group", "location": f"{base_url}/Groups/{name}"},
            }
        )
    return resources


def list_response(page: Page, resources: list[dict[str, object]]) -> dict[str, object]:
    return {
        "schemas": [LIST_SCHEMA],
        "totalResults": page.total,
        "startIndex": page.start_index,
        "itemsPerPage": len(resources),
        "Resources": resources,
    }


# --- users ---------------------------------------------------------------------------------


def _text(body: Mapping[str, Any], key: str, limit: int, *, required: bool = False) -> str | None:
    value = body.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _bad(f"{key} must be a non-empty string")
    if len(value) > limit or not value.isprintable():
        raise _bad(f"{key} must be at most {limit} printable characters")
    return value


def _department(body: Mapping[str, Any], departments: Mapping[str, str]) -> str | None:
    """The enterprise extension's department, when it names one of ours (by key or by
    label); a free-text department of the provider's is ignored, not refused."""
    extension = body.get(ENTERPRISE_SCHEMA)
    named = extension.get("department") if isinstance(extension, dict) else None
    if not isinstance(named, str):
        return None
    for key, label in departments.items():
        if named.strip().lower() in (key.lower(), label.lower()):
            return key
    return None


def user_fields(body: object, departments: Mapping[str, str]) -> UserFields:
    """A User resource as sent in POST or PUT, checked."""
    if not isinstance(body, dict):
        raise _bad("the body must be a JSON object", "invalidSyntax")
    schemas = body.get("schemas")
    if not isinstance(schemas, list) or USER_SCHEMA not in schemas:
        raise _bad(f"schemas must list {USER_SCHEMA}", "invalidSyntax")
    user_name = _text(body, "userName", MAX_USERNAME, required=True)
    assert user_name is not None
    name = body.get("name")
    display_name = _text(body, "displayName", MAX_DISPLAY_NAME) or (
        _text(name, "formatted", MAX_DISPLAY_NAME) if isinstance(name, dict) else None
    )
    active = body.get("active", True)
    if not isinstance(active, bool):
        raise _bad("active must be true or false")
    return UserFields(
        user_name=user_name,
        display_name=display_name or user_name,
        active=active,
        external_id=_text(body, "externalId", MAX_EXTERNAL_ID),
        department=_department(body, departments),
    )


def _stored_external_id(ctx: Provisioner, external_id: str | None) -> str | None:
    # As single sign-on stores its people (core.sso_oidc): `issuer|subject`.
    return None if external_id is None else f"{ctx.issuer or ''}|{external_id}"


def _refuse_taken(
    session: Session, ctx: Provisioner, fields: UserFields, user: User | None = None
) -> None:
    # Names change rarely: one lock for all of them, so two calls that would take the same
    # userName or externalId at once queue, and the second meets the first's.
    session.execute(select(func.pg_advisory_xact_lock(func.hashtext("scim:names"))))
    holder = users_repo.by_username(session, fields.user_name)
    if holder is not None and holder is not user:
        raise ScimError(409, f"the userName '{fields.user_name}' is already taken", "uniqueness")
    stored = _stored_external_id(ctx, fields.external_id)
    if stored is None:
        return
    other = session.execute(
        select(User).where(User.auth_source == SCIM_SOURCE, User.external_id == stored)
    ).scalar_one_or_none()
    if other is not None and other is not user:
        raise ScimError(
            409, f"the externalId '{fields.external_id}' is already another user's", "uniqueness"
        )


def _profile(user: User) -> dict[str, object]:
    return {
        "username": user.username,
        "display_name": user.display_name,
        "active": user.is_active,
        "external_id": user.external_id,
    }


def create_user(session: Session, ctx: Provisioner, fields: UserFields) -> User:
    """A new single sign-on person with no roles until a group is given to them."""
    _refuse_taken(session, ctx, fields)
    user = users_repo.create(
        session,
        username=fields.user_name,
        display_name=fields.display_name,
        # Until a group gives one: a department is required and every role-less person
        # sees nothing anyway.
        department=fields.department or next(iter(ctx.departments)),
        password_hash=NO_LOCAL_PASSWORD,
        roles=[],
    )
    user.auth_source = SCIM_SOURCE
    user.external_id = _stored_external_id(ctx, fields.external_id)
    user.is_active = fields.active
    session.flush()
    security_event(
        session,
        "auth.user_provisioned",
        user.username,
        ctx.origin,
        {**_profile(user), "department": user.department, "roles": [], "source": "scim"},
        actor="system",
    )
    return user


def replace_user(session: Session, ctx: Provisioner, user: User, fields: UserFields) -> None:
    _refuse_taken(session, ctx, fields, user)
    before = _profile(user)
    user.username = fields.user_name
    user.display_name = fields.display_name
    user.is_active = fields.active
    user.external_id = _stored_external_id(ctx, fields.external_id)
    if fields.department is not None and not users_repo.roles_of(session, user.id):
        user.department = fields.department  # with roles, the groups decide it
    after = _profile(user)
    if after != before:
        session.flush()
        security_event(
            session, "auth.user_updated", user.username, ctx.origin, after, "system", before
        )


def active_from_patch(body: object) -> bool:
    """The new `active` of a PatchOp that changes only that (RFC 7644 3.5.2)."""
    active: object = None
    for op in _operations(body):
        path, value = op.get("path"), op.get("value")
        if str(op.get("op", "")).lower() not in ("replace", "add"):
            raise _bad("only replacing active is supported on users", "invalidPath")
        if path is None and isinstance(value, dict) and set(value) == {"active"}:
            value = value["active"]
        elif path != "active":
            raise _bad("only the attribute active can be patched on users", "invalidPath")
        # Some providers (Azure) send the boolean as a string.
        if isinstance(value, str) and value.lower() in ("true", "false"):
            value = value.lower() == "true"
        if not isinstance(value, bool):
            raise _bad("active must be true or false")
        active = value
    assert isinstance(active, bool)
    return active


def set_active(session: Session, ctx: Provisioner, user: User, active: bool) -> None:
    if user.is_active == active:
        return
    before = _profile(user)
    user.is_active = active
    session.flush()
    action = "auth.user_reactivated" if active else "auth.user_deactivated"
    security_event(session, action, user.username, ctx.origin, _profile(user), "system", before)


# --- groups --------------------------------------------------------------------------------


def _operations(body: object) -> list[dict[str, Any]]:
    if not isinstance(body, dict):
        raise _bad("the body must be a JSON object", "invalidSyntax")
    schemas = body.get("schemas")
    if not isinstance(schemas, list) or PATCH_SCHEMA not in schemas:
        raise _bad(f"schemas must list {PATCH_SCHEMA}", "invalidSyntax")
    operations = body.get("Operations")
    if not isinstance(operations, list) or not operations:
        raise _bad("Operations must be a non-empty list", "invalidSyntax")
    if not all(isinstance(op, dict) for op in operations):
        raise _bad("every operation must be an object", "invalidSyntax")
    return operations


def membership_changes(body: object) -> list[tuple[str, str]]:
    """(add|remove, user id) for each member a PatchOp adds to or removes from a group."""
    changes: list[tuple[str, str]] = []
    for op in _operations(body):
        kind = str(op.get("op", "")).lower()
        path = op.get("path")
        value = op.get("value")
        if kind not in ("add", "remove"):
            raise _bad("only adding and removing members is supported on groups", "invalidPath")
        one = _MEMBER_PATH.match(path) if isinstance(path, str) else None
        if kind == "remove" and one is not None:
            changes.append((kind, one.group(1)))
            continue
        if path != "members":
            raise _bad("only the members of a group can be changed", "invalidPath")
        if not isinstance(value, list) or not value:
            raise _bad("value must be a non-empty list of members")
        for member in value:
            member_id = member.get("value") if isinstance(member, dict) else None
            if not isinstance(member_id, str):
                raise _bad('each member must be {"value": "<user id>"}')
            changes.append((kind, member_id))
    return changes


def change_members(
    session: Session, ctx: Provisioner, group: str, changes: list[tuple[str, str]]
) -> None:
    """Add people to the group or take them out of it; their roles follow their groups."""
    users: dict[str, User] = {}
    for _, member_id in changes:
        if member_id not in users:
            try:
                users[member_id] = user_by_id(session, member_id, for_update=True)
            except ScimError:
                raise _bad(f"no user with id {member_id}", "noTarget") from None
    for kind, member_id in changes:
        user = users[member_id]
        groups = set(groups_of(ctx.mapping, users_repo.roles_of(session, user.id)))
        if kind == "add":
            groups.add(group)
        else:
            groups.discard(group)
        apply_assignment(
            session,
            user,
            ctx.mapping.assign(groups),
            ctx.origin,
            {"source": "scim", "groups": sorted(groups), "changed_group": group},
        )

"""SCIM 2.0 provisioning (RFC 7643/7644): the identity provider creates, updates and
deactivates the people of single sign-on, and creates the groups they are in.

SCIM people are single sign-on people (auth_source "oidc"): they have no password here
and sign in through the provider. Their externalId is stored as the provider's subject
(`issuer|externalId`), so their first sign-in finds the account SCIM made. Local and
directory (LDAP) accounts are not SCIM's to see or change. What the provider says about a
person beyond the users table (name parts, title, e-mails) is kept in scim_user_profiles.

Groups are the provider's: stored as it creates, renames and deletes them, whether or not
policies/identity.yaml maps them yet. A person's roles are recomputed from all the stored
groups they are in, with the same mapping single sign-on uses (core.identity), whenever
their membership or a group of theirs changes; a group the mapping does not know gives
nothing. Groups of the mapping that the provider never created are not listed: the
provider owns the list and matches its groups to ours by displayName, so a group shown
here that it did not make would be linked to without ever having been pushed.

Every write is one audited path: a PATCH is applied to the resource as it stands and the
result goes through the same checks and the same write as a PUT. No user is ever deleted:
DELETE deactivates, so the audit trail keeps a live subject.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Select, delete, exists, func, insert, select, true
from sqlalchemy.orm import Session

from core import audit
from core.auth import end_other_sign_ins, security_event
from core.identity import NO_LOCAL_PASSWORD, OIDC, apply_assignment
from core.models import MAX_USERNAME, ScimGroup, ScimGroupMember, ScimUserProfile, User
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
MAX_NAME_PART = 128
MAX_GROUP_NAME = 256
MAX_EXTERNAL_ID = 256
MAX_EMAIL = 254
MAX_EMAILS = 20
MAX_EMAIL_TYPE = 32
_FILTER = re.compile(r'^\s*([\w.]+)\s+eq\s+"((?:[^"\\]|\\.)*)"\s*$', re.IGNORECASE)
# Azure's way to remove one member: path `members[value eq "42"]`.
_MEMBER_PATH = re.compile(r'^members\[\s*value\s+eq\s+"([^"]*)"\s*\]$', re.IGNORECASE)
# `emails[type eq "work"].value` and the like: one filter on a sub-attribute, then maybe one.
_EMAIL_PATH = re.compile(
    r'^emails\[\s*(type|value|primary)\s+eq\s+("[^"]*"|true|false)\s*\](?:\.(\w+))?$',
    re.IGNORECASE,
)
_EMAIL_KEYS = ("value", "type", "primary")


class ScimError(Exception):
    """A refusal in SCIM's error schema; nothing has been written."""

    def __init__(
        self,
        status: int,
        detail: str,
        scim_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.scim_type = scim_type
        self.headers = headers or {}

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
    given_name: str | None = None
    family_name: str | None = None
    title: str | None = None
    emails: tuple[tuple[tuple[str, object], ...], ...] = ()


@dataclass(frozen=True)
class GroupFields:
    display_name: str
    external_id: str | None
    member_ids: frozenset[str]


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


def parse_filter(text: str | None, attributes: Sequence[str]) -> tuple[str, str] | None:
    """(attribute as spelled in `attributes`, value) of `<attribute> eq "value"`, the one
    filter supported; None without one."""
    if text is None:
        return None
    match = _FILTER.match(text)
    known = {name.lower(): name for name in attributes}
    if match is None or match.group(1).lower() not in known:
        supported = " or ".join(f'{name} eq "value"' for name in attributes)
        raise _bad(f"only the filters {supported} are supported", "invalidFilter")
    try:
        value = json.loads(f'"{match.group(2)}"')
    except ValueError:
        raise _bad("the filter's value is not a valid string", "invalidFilter") from None
    if not isinstance(value, str) or not value.isprintable():  # NUL never reaches PostgreSQL
        raise _bad("the filter's value holds control characters", "invalidFilter")
    return known[match.group(1).lower()], value


def _scim_users() -> Select[Any]:
    return select(User).where(User.auth_source == SCIM_SOURCE)


def _emails_match(value: str) -> Any:
    email = func.jsonb_array_elements(ScimUserProfile.emails).table_valued("value").alias("email")
    return exists(
        select(1)
        .select_from(ScimUserProfile)
        .join(email, true())
        .where(
            ScimUserProfile.user_id == User.id,
            func.lower(email.c.value.op("->>")("value")) == value.lower(),
        )
    )


def list_users(
    session: Session, ctx: Provisioner, found_by: tuple[str, str] | None, start: int, count: int
) -> Page:
    query = _scim_users()
    if found_by is not None:
        attribute, value = found_by
        if attribute == "userName":  # caseExact false (RFC 7643 4.1.1)
            query = query.where(func.lower(User.username) == value.lower())
        elif attribute == "externalId":
            query = query.where(User.external_id == _stored_external_id(ctx, value))
        else:
            query = query.where(_emails_match(value))
    return _page(session, query.order_by(User.id), start, count)


def _page(session: Session, query: Select[Any], start: int, count: int) -> Page:
    total = session.execute(select(func.count()).select_from(query.subquery())).scalar_one()
    rows = session.execute(query.offset(start - 1).limit(count)).scalars()
    return Page(total, start, list(rows))


def _number(text: str) -> int:
    """A resource id as stored, 0 (nobody's) when it is not one."""
    number = int(text) if text.isascii() and text.isdigit() else 0
    return number if 0 < number < 2**31 else 0


def _one(session: Session, query: Select[Any], for_update: bool, missing: str) -> Any:
    """The one row `query` finds (locked with `for_update`), or 404 saying `missing`."""
    found = session.execute(query.with_for_update() if for_update else query)
    row = found.scalar_one_or_none()
    if row is None:
        raise ScimError(404, missing)
    return row


def user_by_id(session: Session, user_id: str, *, for_update: bool = False) -> User:
    """A SCIM person by id; 404 for anyone else (local and directory accounts too)."""
    query = _scim_users().where(User.id == _number(user_id))
    user: User = _one(session, query, for_update, f"no user with id {user_id}")
    return user


def external_id_of(user: User) -> str | None:
    """The provider's id for the person, without the issuer it is stored with."""
    if user.external_id is None:
        return None
    return user.external_id.partition("|")[2] or None


def profiles_of(session: Session, user_ids: Iterable[int]) -> dict[int, ScimUserProfile]:
    rows = session.execute(
        select(ScimUserProfile).where(ScimUserProfile.user_id.in_(set(user_ids)))
    ).scalars()
    return {profile.user_id: profile for profile in rows}


def groups_by_user(session: Session, user_ids: Iterable[int]) -> dict[int, list[ScimGroup]]:
    rows = session.execute(
        select(ScimGroupMember.user_id, ScimGroup)
        .join(ScimGroup, ScimGroup.id == ScimGroupMember.group_id)
        .where(ScimGroupMember.user_id.in_(set(user_ids)))
        .order_by(ScimGroup.display_name)
    )
    held: dict[int, list[ScimGroup]] = {}
    for user_id, group in rows:
        held.setdefault(user_id, []).append(group)
    return held


def user_resource(
    user: User, profile: ScimUserProfile | None, groups: Sequence[ScimGroup], base_url: str
) -> dict[str, object]:
    name: dict[str, object] = {"formatted": user.display_name}
    resource: dict[str, object] = {
        "schemas": [USER_SCHEMA, ENTERPRISE_SCHEMA],
        "id": str(user.id),
        "userName": user.username,
        "displayName": user.display_name,
        "name": name,
        "active": user.is_active,
        "groups": [
            {
                "value": str(group.id),
                "display": group.display_name,
                "$ref": f"{base_url}/Groups/{group.id}",
            }
            for group in groups
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
    if profile is not None:
        for key, value in (("givenName", profile.given_name), ("familyName", profile.family_name)):
            if value is not None:
                name[key] = value
        if profile.title is not None:
            resource["title"] = profile.title
        if profile.emails:
            resource["emails"] = profile.emails
    return resource


def user_resources(
    session: Session, users: Sequence[User], base_url: str
) -> list[dict[str, object]]:
    ids = [user.id for user in users]
    profiles, groups = profiles_of(session, ids), groups_by_user(session, ids)
    return [
        user_resource(user, profiles.get(user.id), groups.get(user.id, []), base_url)
        for user in users
    ]


def list_groups(session: Session, found_by: tuple[str, str] | None, start: int, count: int) -> Page:
    query = select(ScimGroup)
    if found_by is not None:
        attribute, value = found_by
        if attribute == "displayName":  # caseExact false (RFC 7643 4.2)
            query = query.where(func.lower(ScimGroup.display_name) == value.lower())
        else:
            query = query.where(ScimGroup.external_id == value)
    return _page(session, query.order_by(ScimGroup.id), start, count)


def group_by_id(session: Session, group_id: str, *, for_update: bool = False) -> ScimGroup:
    query = select(ScimGroup).where(ScimGroup.id == _number(group_id))
    group: ScimGroup = _one(session, query, for_update, f"no group with id {group_id}")
    return group


def _member_ids(session: Session, group_id: int) -> set[int]:
    rows = session.execute(
        select(ScimGroupMember.user_id).where(ScimGroupMember.group_id == group_id)
    ).scalars()
    return set(rows)


def group_resources(
    session: Session, groups: Sequence[ScimGroup], base_url: str, *, with_members: bool = True
) -> list[dict[str, object]]:
    members: dict[int, list[int]] = {}
    if with_members and groups:
        rows = session.execute(
            select(ScimGroupMember.group_id, ScimGroupMember.user_id)
            .where(ScimGroupMember.group_id.in_([group.id for group in groups]))
            .order_by(ScimGroupMember.user_id)
        )
        for group_id, user_id in rows:
            members.setdefault(group_id, []).append(user_id)
    usernames = users_repo.usernames(session, (u for ids in members.values() for u in ids))
    resources: list[dict[str, object]] = []
    for group in groups:
        resource: dict[str, object] = {
            "schemas": [GROUP_SCHEMA],
            "id": str(group.id),
            "displayName": group.display_name,
            "meta": {
                "resourceType": "Group",
                "created": group.created_at.isoformat(),
                "lastModified": group.updated_at.isoformat(),
                "location": f"{base_url}/Groups/{group.id}",
            },
        }
        if with_members:
            resource["members"] = [
                {
                    "value": str(user_id),
                    "display": usernames[user_id],
                    "$ref": f"{base_url}/Users/{user_id}",
                }
                for user_id in members.get(group.id, [])
            ]
        if group.external_id is not None:
            resource["externalId"] = group.external_id
        resources.append(resource)
    return resources


def list_response(page: Page, resources: list[dict[str, object]]) -> dict[str, object]:
    return {
        "schemas": [LIST_SCHEMA],
        "totalResults": page.total,
        "startIndex": page.start_index,
        "itemsPerPage": len(resources),
        "Resources": resources,
    }


# --- checking what the provider sends -----------------------------------------------------


def _text(body: Mapping[str, Any], key: str, limit: int, *, required: bool = False) -> str | None:
    value = body.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _bad(f"{key} must be a non-empty string")
    if len(value) > limit or not value.isprintable():
        raise _bad(f"{key} must be at most {limit} printable characters")
    return value


def _object(body: object) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _bad("the body must be a JSON object", "invalidSyntax")
    return body


def _with_schema(body: object, schema: str) -> dict[str, Any]:
    checked = _object(body)
    schemas = checked.get("schemas")
    if not isinstance(schemas, list) or schema not in schemas:
        raise _bad(f"schemas must list {schema}", "invalidSyntax")
    return checked


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


def _emails(body: Mapping[str, Any]) -> tuple[tuple[tuple[str, object], ...], ...]:
    sent = body.get("emails")
    if sent is None:
        return ()
    if not isinstance(sent, list) or len(sent) > MAX_EMAILS:
        raise _bad(f"emails must be a list of at most {MAX_EMAILS} addresses")
    emails: list[tuple[tuple[str, object], ...]] = []
    for email in sent:
        if not isinstance(email, dict):
            raise _bad('each of emails must be {"value": "<address>"}')
        value = _text(email, "value", MAX_EMAIL, required=True)
        kind = _text(email, "type", MAX_EMAIL_TYPE)
        primary = email.get("primary", False)
        if not isinstance(primary, bool):
            raise _bad("emails.primary must be true or false")
        entry: list[tuple[str, object]] = [("value", value)]
        if kind is not None:
            entry.append(("type", kind))
        if primary:
            entry.append(("primary", True))
        emails.append(tuple(entry))
    if sum(dict(email).get("primary", False) is True for email in emails) > 1:
        raise _bad("at most one of emails can be primary")
    return tuple(emails)


def user_fields(body: object, departments: Mapping[str, str]) -> UserFields:
    """A User resource as sent in POST or PUT (or as a PATCH leaves it), checked."""
    checked = _with_schema(body, USER_SCHEMA)
    user_name = _text(checked, "userName", MAX_USERNAME, required=True)
    assert user_name is not None
    name = checked.get("name")
    if name is not None and not isinstance(name, dict):
        raise _bad("name must be an object")
    name = name or {}
    given_name = _text(name, "givenName", MAX_NAME_PART)
    family_name = _text(name, "familyName", MAX_NAME_PART)
    display_name = (
        _text(checked, "displayName", MAX_DISPLAY_NAME)
        or _text(name, "formatted", MAX_DISPLAY_NAME)
        or " ".join(part for part in (given_name, family_name) if part)[:MAX_DISPLAY_NAME]
    )
    active = checked.get("active", True)
    if not isinstance(active, bool):
        raise _bad("active must be true or false")
    return UserFields(
        user_name=user_name,
        display_name=display_name or user_name,
        active=active,
        external_id=_text(checked, "externalId", MAX_EXTERNAL_ID),
        department=_department(checked, departments),
        given_name=given_name,
        family_name=family_name,
        title=_text(checked, "title", MAX_NAME_PART),
        emails=_emails(checked),
    )


def group_fields(body: object) -> GroupFields:
    """A Group resource as sent in POST or PUT (or as a PATCH leaves it), checked."""
    checked = _with_schema(body, GROUP_SCHEMA)
    display_name = _text(checked, "displayName", MAX_GROUP_NAME, required=True)
    assert display_name is not None
    sent = checked.get("members", [])
    if not isinstance(sent, list):
        raise _bad("members must be a list")
    return GroupFields(
        display_name=display_name,
        external_id=_text(checked, "externalId", MAX_EXTERNAL_ID),
        member_ids=frozenset(_member_id(member) for member in sent),
    )


def _member_id(member: object) -> str:
    member_id = member.get("value") if isinstance(member, dict) else None
    if not isinstance(member_id, str):
        raise _bad('each member must be {"value": "<user id>"}')
    return member_id


# --- users ---------------------------------------------------------------------------------


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


def _profile(user: User, profile: ScimUserProfile | None) -> dict[str, object]:
    return {
        "username": user.username,
        "display_name": user.display_name,
        "active": user.is_active,
        "external_id": user.external_id,
        "given_name": profile.given_name if profile else None,
        "family_name": profile.family_name if profile else None,
        "title": profile.title if profile else None,
        "emails": list(profile.emails) if profile else [],
    }


def _store_profile(
    session: Session, user: User, profile: ScimUserProfile | None, fields: UserFields
) -> ScimUserProfile:
    if profile is None:
        profile = ScimUserProfile(user_id=user.id)
        session.add(profile)
    profile.given_name = fields.given_name
    profile.family_name = fields.family_name
    profile.title = fields.title
    profile.emails = [dict(email) for email in fields.emails]
    return profile


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
    profile = _store_profile(session, user, None, fields)
    session.flush()
    security_event(
        session,
        "auth.user_provisioned",
        user.username,
        ctx.origin,
        {
            **_profile(user, profile),
            "department": user.department,
            "roles": [],
            "source": "scim",
        },
        actor="system",
    )
    return user


def replace_user(session: Session, ctx: Provisioner, user: User, fields: UserFields) -> None:
    """The one write of a person's attributes (PUT, PATCH, DELETE), audited with before
    and after: as a deactivation or reactivation when `active` changes."""
    _refuse_taken(session, ctx, fields, user)
    profile = profiles_of(session, [user.id]).get(user.id)
    before = _profile(user, profile)
    user.username = fields.user_name
    user.display_name = fields.display_name
    user.is_active = fields.active
    user.external_id = _stored_external_id(ctx, fields.external_id)
    if fields.department is not None and not users_repo.roles_of(session, user.id):
        user.department = fields.department  # with roles, the groups decide it
    profile = _store_profile(session, user, profile, fields)
    after = _profile(user, profile)
    if after == before:
        return
    profile.updated_at = func.now()
    session.flush()
    action = "auth.user_updated"
    if after["active"] != before["active"]:
        action = "auth.user_reactivated" if user.is_active else "auth.user_deactivated"
    security_event(session, action, user.username, ctx.origin, after, "system", before)
    if not user.is_active and before["active"]:
        # Otherwise a later reactivation would bring the old cookies and tokens back.
        end_other_sign_ins(session, user, ctx.origin, "deactivated", "system")


def current_fields(session: Session, ctx: Provisioner, user: User) -> UserFields:
    """The person as they stand, as a PUT would send them."""
    [resource] = user_resources(session, [user], "")
    return user_fields(resource, ctx.departments)


def deactivate(session: Session, ctx: Provisioner, user: User) -> None:
    replace_user(session, ctx, user, replace(current_fields(session, ctx, user), active=False))


def _operations(body: object) -> list[dict[str, Any]]:
    checked = _with_schema(body, PATCH_SCHEMA)
    operations = checked.get("Operations")
    if not isinstance(operations, list) or not operations:
        raise _bad("Operations must be a non-empty list", "invalidSyntax")
    if not all(isinstance(op, dict) for op in operations):
        raise _bad("every operation must be an object", "invalidSyntax")
    for op in operations:
        if str(op.get("op", "")).lower() not in ("add", "replace", "remove"):
            raise _bad("op must be add, replace or remove", "invalidSyntax")
        if op.get("path") is not None and not isinstance(op.get("path"), str):
            raise _bad("path must be a string", "invalidPath")
    return operations


# The User attributes a PATCH may change, by lower-cased path: where they sit in the
# resource (one key, or an object's key and its sub-attribute).
_USER_PATHS: dict[str, tuple[str, ...]] = {
    "username": ("userName",),
    "displayname": ("displayName",),
    "externalid": ("externalId",),
    "active": ("active",),
    "title": ("title",),
    "emails": ("emails",),
    "name": ("name",),
    "name.givenname": ("name", "givenName"),
    "name.familyname": ("name", "familyName"),
    "name.formatted": ("name", "formatted"),
    ENTERPRISE_SCHEMA.lower(): (ENTERPRISE_SCHEMA,),
    f"{ENTERPRISE_SCHEMA.lower()}:department": (ENTERPRISE_SCHEMA, "department"),
}
_READ_ONLY = {"id", "meta", "groups", "schemas"}
_REQUIRED = {("userName",), ("active",)}
# Our display name is the formatted name: a change to either is a change to both.
_SAME_VALUE = {("displayName",): ("name", "formatted"), ("name", "formatted"): ("displayName",)}


def _user_path(path: str) -> tuple[str, ...]:
    lowered = _without_core_schema(path).lower()
    if lowered.split(".")[0] in _READ_ONLY:
        raise _bad(f"{path} cannot be changed", "mutability")
    if lowered not in _USER_PATHS:
        raise _bad(f"{path} is not an attribute of users that can be changed", "invalidPath")
    return _USER_PATHS[lowered]


def _set(resource: dict[str, Any], at: tuple[str, ...], value: object) -> None:
    for target in (at, _SAME_VALUE.get(at)):
        if target is None:
            continue
        holder = resource
        if len(target) == 2:
            if not isinstance(resource.get(target[0]), dict):
                resource[target[0]] = {}
            holder = resource[target[0]]
        if value is None:
            holder.pop(target[-1], None)
        else:
            holder[target[-1]] = value


def _email_filter(match: re.Match[str]) -> tuple[str, object, str | None]:
    attribute, wanted, sub = match.group(1).lower(), match.group(2), match.group(3)
    value: object = wanted.lower() == "true" if attribute == "primary" else wanted.strip('"')
    if attribute == "primary" and wanted.startswith('"'):
        raise _bad("emails[primary eq ...] takes true or false", "invalidPath")
    if sub is not None and sub.lower() not in _EMAIL_KEYS:
        raise _bad(f"emails have no sub-attribute {sub}", "invalidPath")
    return attribute, value, sub.lower() if sub else None


def _patch_emails(resource: dict[str, Any], kind: str, match: re.Match[str], value: object) -> None:
    attribute, wanted, sub = _email_filter(match)
    emails = [dict(e) for e in resource.get("emails") or [] if isinstance(e, dict)]

    def selected(email: dict[str, Any]) -> bool:
        found = email.get(attribute, False if attribute == "primary" else None)
        if isinstance(found, str) and isinstance(wanted, str):
            return found.lower() == wanted.lower()
        return bool(found == wanted)

    hits = [email for email in emails if selected(email)]
    if kind == "remove":
        emails = [email for email in emails if not selected(email)]
    elif not hits and kind == "replace":
        raise _bad(f"no email matches {match.group(0)}", "noTarget")
    elif not hits:  # add: the filter names the new address's type (Entra's habit)
        emails.append({attribute: wanted, **({sub: value} if sub else _dict(value))})
    else:
        for email in hits:
            email.update({sub: value} if sub else _dict(value))
    resource["emails"] = emails


def _dict(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad("value must be an object here")
    return value


def _as_list(value: object) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _without_core_schema(path: str) -> str:
    core = USER_SCHEMA.lower() + ":"
    return path.strip()[len(core) :] if path.strip().lower().startswith(core) else path.strip()


def _patch_user_path(resource: dict[str, Any], kind: str, path: str, value: object) -> None:
    email = _EMAIL_PATH.match(_without_core_schema(path))
    if email is not None:
        _patch_emails(resource, kind, email, value)
        return
    at = _user_path(path)
    if kind == "remove":
        if at in _REQUIRED:
            raise _bad(f"{at[0]} is required and cannot be removed")
        if at == ("emails",) and value is not None:  # remove the addresses listed
            gone = {str(e.get("value", "")).lower() for e in _as_list(value) if isinstance(e, dict)}
            resource["emails"] = [
                e
                for e in resource.get("emails") or []
                if not isinstance(e, dict) or str(e.get("value")).lower() not in gone
            ]
        elif len(at) == 1 and at[0] in ("name", ENTERPRISE_SCHEMA):
            for sub in list(resource.get(at[0]) or {}):
                _set(resource, (at[0], sub), None)
        else:
            _set(resource, at, None)
        return
    if value is None:
        raise _bad(f"{kind} needs a value", "invalidValue")
    if at == ("active",) and isinstance(value, str) and value.lower() in ("true", "false"):
        value = value.lower() == "true"  # Azure sends the boolean as a string
    if at == ("emails",):
        added = _as_list(value)
        if kind == "add":  # add merges by address (RFC 7644 3.5.2.1)
            new = {str(e.get("value", "")).lower() for e in added if isinstance(e, dict)}
            kept = [
                e
                for e in resource.get("emails") or []
                if not isinstance(e, dict) or str(e.get("value")).lower() not in new
            ]
            added = kept + added
        resource["emails"] = added
    elif len(at) == 1 and at[0] in ("name", ENTERPRISE_SCHEMA):
        for sub, sub_value in _dict(value).items():
            _patch_user_path(
                resource, kind, f"{path}.{sub}" if at[0] == "name" else f"{path}:{sub}", sub_value
            )
    else:
        _set(resource, at, value)


def patched_user(resource: dict[str, Any], body: object) -> dict[str, Any]:
    """The User resource as a PatchOp (RFC 7644 3.5.2) leaves it: add, replace and remove,
    with a path or (add, replace) an object of paths and values."""
    patched = json.loads(json.dumps(resource))
    for op in _operations(body):
        kind, path, value = str(op["op"]).lower(), op.get("path"), op.get("value")
        if path is not None:
            _patch_user_path(patched, kind, path, value)
            continue
        if kind == "remove":
            raise _bad("remove needs a path", "noTarget")
        for key, sub_value in _dict(value).items():
            if key == "id" and sub_value == patched["id"]:
                continue  # some providers send the id along with the change
            _patch_user_path(patched, kind, key, sub_value)
    return patched


# --- groups --------------------------------------------------------------------------------


def _group_event(
    session: Session,
    ctx: Provisioner,
    action: str,
    group_id: int,
    after: dict[str, Any],
    before: dict[str, Any] | None = None,
) -> None:
    """A security event on the group's own stream (by id: it outlives renames)."""
    stream = f"scim_group:{group_id}"
    audit.append_security_event(
        session,
        stream=stream,
        action=action,
        target=stream,
        actor="system",
        actor_type="system",
        origin=ctx.origin,
        before=before,
        after=after,
    )


def _group_names_by_user(session: Session, user_ids: Iterable[int]) -> dict[int, list[str]]:
    groups = groups_by_user(session, user_ids)
    return {user_id: [group.display_name for group in held] for user_id, held in groups.items()}


def _members(session: Session, member_ids: Iterable[str]) -> dict[int, User]:
    """The SCIM people named, locked while their groups change; one unknown id refuses
    the whole change."""
    wanted = {member_id: _number(member_id) for member_id in member_ids}
    rows = session.execute(
        _scim_users().where(User.id.in_(set(wanted.values()))).order_by(User.id).with_for_update()
    ).scalars()
    found = {user.id: user for user in rows}
    for member_id, number in sorted(wanted.items()):
        if number not in found:
            raise _bad(f"no user with id {member_id}", "noTarget")
    return found


def _lock_groups(session: Session) -> None:
    # Group writes queue behind one another: each recomputes its members' roles from all
    # their groups, which another group's write running at once could not see.
    session.execute(select(func.pg_advisory_xact_lock(func.hashtext("scim:groups"))))


def _refuse_taken_group(session: Session, name: str, group: ScimGroup | None) -> None:
    holder = session.execute(
        select(ScimGroup).where(func.lower(ScimGroup.display_name) == name.lower())
    ).scalar_one_or_none()
    if holder is not None and holder is not group:
        raise ScimError(409, f"the displayName '{name}' is already a group's", "uniqueness")


def _sync_members(
    session: Session,
    ctx: Provisioner,
    users: Mapping[int, User],
    before: Mapping[int, list[str]],
    group_name: str,
) -> None:
    """Bring the roles of the people whose groups changed in line with all their groups."""
    after = _group_names_by_user(session, users)
    for user_id, user in sorted(users.items()):
        was, now = before.get(user_id, []), after.get(user_id, [])
        if was == now:
            continue
        security_event(
            session,
            "auth.groups_changed",
            user.username,
            ctx.origin,
            {"groups": now, "changed_group": group_name},
            "system",
            {"groups": was},
        )
        apply_assignment(
            session,
            user,
            ctx.mapping.assign(now),
            ctx.origin,
            {"source": "scim", "groups": now, "changed_group": group_name},
        )


def write_group(
    session: Session, ctx: Provisioner, group: ScimGroup | None, fields: GroupFields
) -> ScimGroup:
    """Create the group (`group` None) or make it what `fields` says (POST, PUT, PATCH):
    name, externalId and members; every member whose groups change gets their roles
    recomputed. Audited on the group's stream and on each such member's."""
    _lock_groups(session)
    _refuse_taken_group(session, fields.display_name, group)
    wanted = _members(session, fields.member_ids)
    current = _member_ids(session, group.id) if group is not None else set()
    # Whose groups may change: recomputed below when they did (a rename changes them all).
    names_before = _group_names_by_user(session, current | set(wanted))
    if group is None:
        group = ScimGroup(display_name=fields.display_name, external_id=fields.external_id)
        session.add(group)
        session.flush()
        _group_event(
            session,
            ctx,
            "scim.group_created",
            group.id,
            {"display_name": group.display_name, "external_id": group.external_id},
        )
    else:
        before = {"display_name": group.display_name, "external_id": group.external_id}
        after = {"display_name": fields.display_name, "external_id": fields.external_id}
        if after != before:
            renamed = after["display_name"] != before["display_name"]
            group.display_name, group.external_id = fields.display_name, fields.external_id
            group.updated_at = func.now()
            session.flush()
            action = "scim.group_renamed" if renamed else "scim.group_updated"
            _group_event(session, ctx, action, group.id, after, before)
    added, removed = set(wanted) - current, current - set(wanted)
    people = {**_members(session, (str(u) for u in removed)), **wanted}
    if removed:
        session.execute(
            delete(ScimGroupMember).where(
                ScimGroupMember.group_id == group.id, ScimGroupMember.user_id.in_(removed)
            )
        )
    if added:
        session.execute(
            insert(ScimGroupMember),
            [{"group_id": group.id, "user_id": user_id} for user_id in sorted(added)],
        )
    if added or removed:
        usernames = users_repo.usernames(session, added | removed)
        _group_event(
            session,
            ctx,
            "scim.group_members_changed",
            group.id,
            {
                "added": sorted(usernames[u] for u in added),
                "removed": sorted(usernames[u] for u in removed),
            },
        )
    _sync_members(session, ctx, people, names_before, group.display_name)
    return group


def delete_group(session: Session, ctx: Provisioner, group: ScimGroup) -> None:
    """The group is gone; its members keep the roles their other groups give."""
    _lock_groups(session)
    member_ids = _member_ids(session, group.id)
    people = _members(session, (str(user_id) for user_id in member_ids))
    names_before = _group_names_by_user(session, member_ids)
    usernames = users_repo.usernames(session, member_ids)
    _group_event(
        session,
        ctx,
        "scim.group_deleted",
        group.id,
        {"deleted": True},
        {
            "display_name": group.display_name,
            "external_id": group.external_id,
            "members": sorted(usernames.values()),
        },
    )
    name = group.display_name
    session.delete(group)
    session.flush()
    _sync_members(session, ctx, people, names_before, name)


def patched_group(resource: dict[str, Any], body: object) -> dict[str, Any]:
    """The Group resource as a PatchOp leaves it: members added, removed (all, listed, or
    Azure's `members[value eq "id"]`) or replaced; displayName and externalId set."""
    patched = json.loads(json.dumps(resource))
    members: list[str] = [m["value"] for m in patched.get("members", [])]

    def change(kind: str, path: str, value: object) -> None:
        nonlocal members
        one = _MEMBER_PATH.match(path.strip())
        lowered = path.strip().lower()
        if lowered.startswith(GROUP_SCHEMA.lower() + ":"):
            lowered = lowered[len(GROUP_SCHEMA) + 1 :]
        if one is not None and kind == "remove":
            members = [m for m in members if m != one.group(1)]
        elif lowered == "members":
            listed = [_member_id(m) for m in _as_list(value)] if value is not None else []
            if kind == "remove":
                members = [m for m in members if value is not None and m not in listed]
            elif kind == "add":
                members += [m for m in listed if m not in members]
            else:
                members = listed
        elif lowered in ("displayname", "externalid"):
            key = "displayName" if lowered == "displayname" else "externalId"
            if kind == "remove" and key == "displayName":
                raise _bad("displayName is required and cannot be removed")
            patched[key] = None if kind == "remove" else value
        elif lowered == "id" and value == patched["id"]:
            pass  # Okta sends the id along with a new displayName
        elif lowered in _READ_ONLY:
            raise _bad(f"{path} cannot be changed", "mutability")
        else:
            raise _bad(f"{path} is not an attribute of groups that can be changed", "invalidPath")

    for op in _operations(body):
        kind, path, value = str(op["op"]).lower(), op.get("path"), op.get("value")
        if path is not None:
            change(kind, path, value)
        elif kind == "remove":
            raise _bad("remove needs a path", "noTarget")
        else:
            for key, sub_value in _dict(value).items():
                change(kind, key, sub_value)
    patched["members"] = [{"value": m} for m in members]
    return patched

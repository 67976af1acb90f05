"""People from single sign-on (OIDC) and the directory (LDAP): just-in-time provisioning
from their groups, and LDAP bind sign-in.

Both entry points end in `provision`: the person gets a local user the first time, and
their roles are replaced at every sign-in by what policies/identity.yaml gives their
current groups. Every creation and role change is an audited security event.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path

import ldap3
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import escape_rdn
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from core.auth import AccessRefused, DirectoryIncident, security_event
from core.models import MAX_USERNAME, ScimGroup, ScimGroupMember, User, UserRole
from core.repositories import users as users_repo
from core.runtime import Runtime
from core.settings import Settings
from policies.engine import PolicyEngine
from policies.identity import Assignment, IdentityMap
from workflows.contracts import Origin

OIDC = "oidc"
LDAP = "ldap"
# Not an argon2 hash: no password ever matches it (external people have none of ours).
NO_LOCAL_PASSWORD = "!external"


class DirectoryUnavailable(DirectoryIncident):
    """The directory could not be asked; nobody is refused or let in because of it (503)."""


class DirectoryAmbiguous(DirectoryIncident, AccessRefused):
    """More than one directory entry answers to the login name: nobody is signed in as
    any of them until the directory (or LDAP_USER_FILTER) is put right (403)."""

    action = "auth.directory_ambiguous"


@dataclass(frozen=True)
class ExternalPerson:
    """Who the identity provider or directory says signed in, and their groups now."""

    source: str
    external_id: str
    username: str
    display_name: str
    # None: the provider did not say (no groups claim); the groups it provisioned over SCIM
    # then count.
    groups: tuple[str, ...] | None
    # When the provider says it checked a second factor (OIDC `amr`); None: not known.
    mfa_at: datetime | None = None


@lru_cache(maxsize=8)
def identity_map(policy: PolicyEngine, directory: Path) -> IdentityMap:
    """identity.yaml checked against the running roles (read once per policy engine)."""
    return IdentityMap.load(policy.roles, directory)


def identity_map_of(rt: Runtime) -> IdentityMap:
    return identity_map(rt.policy, rt.settings.policies_dir)


def _by_external_id(session: Session, source: str, external_id: str) -> User | None:
    return session.execute(
        select(User).where(User.auth_source == source, User.external_id == external_id)
    ).scalar_one_or_none()


def _replace_roles(session: Session, user: User, roles: frozenset[str]) -> None:
    session.execute(delete(UserRole).where(UserRole.user_id == user.id))
    session.add_all(UserRole(user_id=user.id, role=role) for role in sorted(roles))
    session.flush()


def _profile(user: User, roles: frozenset[str]) -> dict[str, object]:
    return {
        "display_name": user.display_name,
        "department": user.department,
        "team": user.team,
        "roles": sorted(roles),
    }


def _provisioned_groups(session: Session, user: User) -> tuple[str, ...]:
    """The groups the identity provider put this person in over SCIM."""
    rows = session.execute(
        select(ScimGroup.display_name)
        .join(ScimGroupMember, ScimGroupMember.group_id == ScimGroup.id)
        .where(ScimGroupMember.user_id == user.id)
    )
    return tuple(rows.scalars())


def provision(
    session: Session, mapping: IdentityMap, person: ExternalPerson, origin: Origin
) -> User:
    """The local user for an external person, created or brought up to date from their
    groups; refused (AccessRefused, audited) when no group of theirs is mapped."""
    # Two first sign-ins of one person at once: one creates the user, the other waits.
    lock_key = f"identity:{person.source}:{person.external_id}"
    session.execute(select(func.pg_advisory_xact_lock(func.hashtext(lock_key))))
    user = _by_external_id(session, person.source, person.external_id)
    groups = person.groups
    if groups is None:
        groups = _provisioned_groups(session, user) if user is not None else ()
    assignment = mapping.assign(groups)
    seen = {"source": person.source, "groups": sorted(groups)}
    if user is None:
        holder = users_repo.by_username(session, person.username)
        if holder is not None:
            security_event(
                session,
                "auth.sso_refused",
                person.username,
                origin,
                {**seen, "reason": f"username held by a {holder.auth_source} account"},
                actor="system",
            )
            raise AccessRefused(
                f"the username '{person.username}' already belongs to another account here; "
                "ask an administrator to resolve it"
            )
    if not assignment.roles:
        if user is not None:
            held = users_repo.roles_of(session, user.id)
            if held:
                _replace_roles(session, user, frozenset())
                security_event(
                    session,
                    "auth.roles_synced",
                    user.username,
                    origin,
                    {"roles": [], **seen},
                    actor="system",
                    before={"roles": sorted(held)},
                )
        security_event(
            session,
            "auth.sso_refused",
            person.username,
            origin,
            {**seen, "reason": "no mapped group"},
            actor="system",
        )
        raise AccessRefused(
            "you are not in any group that gives access to the backoffice; "
            "ask your administrator to add you to one"
        )
    department = assignment.department
    assert department is not None  # a mapped group always gives one
    if user is None:
        user = users_repo.create(
            session,
            username=person.username,
            display_name=person.display_name,
            department=department,
            password_hash=NO_LOCAL_PASSWORD,
            roles=sorted(assignment.roles),
            team=assignment.team,
        )
        user.auth_source = person.source
        user.external_id = person.external_id
        session.flush()
        security_event(
            session,
            "auth.user_provisioned",
            user.username,
            origin,
            {**_profile(user, assignment.roles), **seen, "external_id": person.external_id},
            actor="system",
        )
        return user
    if not user.is_active:
        security_event(
            session, "auth.sso_refused", user.username, origin, {**seen, "reason": "disabled"}
        )
        raise AccessRefused("this account is disabled here; ask your administrator")
    apply_assignment(session, user, assignment, origin, seen, display_name=person.display_name)
    return user


def apply_assignment(
    session: Session,
    user: User,
    assignment: Assignment,
    origin: Origin,
    seen: Mapping[str, object],
    *,
    display_name: str | None = None,
) -> None:
    """Give an existing user the roles (and department and team, when a group gives
    them) of their current groups; audited as auth.roles_synced when anything changes."""
    before_roles = users_repo.roles_of(session, user.id)
    before = _profile(user, before_roles)
    if display_name is not None:
        user.display_name = display_name
    if assignment.department is not None:
        user.department = assignment.department
        user.team = assignment.team
    if before_roles != assignment.roles:
        _replace_roles(session, user, assignment.roles)
    after = _profile(user, assignment.roles)
    if after != before:
        security_event(
            session,
            "auth.roles_synced",
            user.username,
            origin,
            {**after, **seen},
            actor="system",
            before=before,
        )


def check_username(username: object) -> str:
    """The name an identity provider or directory gives, if it can be ours."""
    if not isinstance(username, str) or not username.strip():
        raise AccessRefused("the identity provider sent no username (preferred_username)")
    if len(username) > MAX_USERNAME or not username.isprintable():
        raise AccessRefused("the username from the identity provider cannot be used here")
    return username


# --- LDAP ---------------------------------------------------------------------------------


UNREACHABLE = "the directory cannot be reached; try again later"
INVALID_CREDENTIALS = 49
SIZE_LIMIT_EXCEEDED = 4
PERSON_ATTRIBUTES = ["uid", "cn", "displayName"]


class LdapDirectory:
    """Bind as the person (never anonymously); their groups come from the directory.

    The person's DN comes from LDAP_USER_DN_TEMPLATE, or, with LDAP_BIND_DN, from a search
    as that service account (search-then-bind), which then also reads their groups.
    """

    source = LDAP

    def __init__(self, settings: Settings, mapping: IdentityMap) -> None:
        assert settings.ldap_url is not None
        self.url = settings.ldap_url.rstrip("/")  # ldap3 takes no path, not even "/"
        self.user_dn_template = settings.ldap_user_dn_template
        self.bind_dn = settings.ldap_bind_dn or None
        self.bind_password = settings.ldap_bind_password
        self.user_search_base = settings.ldap_user_search_base
        self.user_filter = settings.ldap_user_filter
        self.group_base = settings.ldap_group_base
        self.timeout = settings.ldap_timeout_seconds
        self.mapping = mapping

    def check_password(self, username: str, password: str) -> ExternalPerson | None:
        # An empty password makes a simple bind "unauthenticated" (RFC 4513 5.1.2), which
        # many servers answer with success: it must never reach the directory.
        if not password or not username or len(username) > MAX_USERNAME:
            return None
        try:
            if self.bind_dn is None:
                return self._bind_as_derived_dn(username, password)
            return self._search_then_bind(username, password)
        except LDAPException:
            raise DirectoryUnavailable(UNREACHABLE, {"reason": "unreachable"}) from None

    def provision(self, session: Session, person: ExternalPerson, origin: Origin) -> User:
        return provision(session, self.mapping, person, origin)

    def _bind_as_derived_dn(self, username: str, password: str) -> ExternalPerson | None:
        dn = self.user_dn_template.format(username=escape_rdn(username))
        connection = self._connection(dn, password)
        try:
            if not self._bind(connection):
                return None
            connection.search(dn, "(objectClass=*)", ldap3.BASE, attributes=PERSON_ATTRIBUTES)
            if not connection.entries:
                return None
            return self._person(connection, connection.entries[0], username)
        finally:
            connection.unbind()

    def _search_then_bind(self, username: str, password: str) -> ExternalPerson | None:
        assert self.bind_dn is not None and self.bind_password is not None
        assert self.user_search_base is not None  # the settings refuse a bind DN without it
        service = self._connection(self.bind_dn, self.bind_password.get_secret_value())
        try:
            if not self._bind(service):
                raise DirectoryUnavailable(
                    "the directory refused the backoffice's service account; "
                    "try again later or tell your administrator",
                    {"reason": "service account refused", "bind_dn": self.bind_dn},
                )
            # Two entries are enough to know the name is ambiguous.
            service.search(
                self.user_search_base,
                self.user_filter.format(username=escape_filter_chars(username)),
                ldap3.SUBTREE,
                attributes=PERSON_ATTRIBUTES,
                size_limit=2,
            )
            found = list(service.entries)
            if service.result.get("result") == SIZE_LIMIT_EXCEEDED or len(found) > 1:
                raise DirectoryAmbiguous(
                    "more than one directory entry answers to this username; "
                    "ask your administrator to resolve it",
                    {"reason": "more than one entry", "dns": [str(e.entry_dn) for e in found]},
                )
            if not found:
                return None
            person_dn = str(found[0].entry_dn)
            themselves = self._connection(person_dn, password)
            try:
                if not self._bind(themselves):
                    return None
            finally:
                themselves.unbind()
            return self._person(service, found[0], username)
        finally:
            service.unbind()

    def _connection(self, dn: str, password: str) -> ldap3.Connection:
        try:
            server = ldap3.Server(self.url, connect_timeout=self.timeout, get_info=ldap3.NONE)
            return ldap3.Connection(
                server,
                user=dn,
                password=password,
                authentication=ldap3.SIMPLE,
                receive_timeout=max(1, round(self.timeout)),  # ldap3 packs it as an int
                read_only=True,
                raise_exceptions=False,
            )
        except LDAPException:
            raise DirectoryUnavailable(
                "LDAP_URL is not a usable directory address", {"reason": "bad LDAP_URL"}
            ) from None

    @staticmethod
    def _bind(connection: ldap3.Connection) -> bool:
        """True when the password is right, False when it is wrong; unavailable otherwise."""
        connection.open()
        if connection.bind():
            return True
        if connection.result.get("result") == INVALID_CREDENTIALS:
            return False
        raise DirectoryUnavailable(
            "the directory refused to check your password; try again later",
            {"reason": "bind refused", "result": connection.result.get("description")},
        )

    def _person(
        self, connection: ldap3.Connection, entry: ldap3.Entry, login_name: str
    ) -> ExternalPerson:
        entry_dn = str(entry.entry_dn)
        # Active Directory people often have no uid: the name they matched by is theirs.
        uid = str(entry.uid.value) if "uid" in entry else login_name
        display = entry.displayName.value if "displayName" in entry else None
        display = display or (entry.cn.value if "cn" in entry else None) or uid
        connection.search(
            self.group_base,
            f"(&(objectClass=groupOfNames)(member={escape_filter_chars(entry_dn)}))",
            ldap3.SUBTREE,
            attributes=["cn"],
        )
        groups = tuple(str(group.cn.value) for group in connection.entries if "cn" in group)
        return ExternalPerson(
            source=LDAP,
            external_id=entry_dn.lower(),
            username=check_username(uid),
            display_name=str(display)[:128],
            groups=groups,
        )


def ldap_directory(rt: Runtime) -> LdapDirectory | None:
    """The directory to sign people in with, when LDAP_URL is set."""
    if not rt.settings.ldap_enabled:
        return None
    return LdapDirectory(rt.settings, identity_map_of(rt))

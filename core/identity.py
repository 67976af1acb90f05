"""People from single sign-on (OIDC) and the directory (LDAP): just-in-time provisioning
from their groups, and LDAP bind sign-in.

Both entry points end in `provision`: the person gets a local user the first time, and
their roles are replaced at every sign-in by what policies/identity.yaml gives their
current groups. Every creation and role change is an audited security event.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import ldap3
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import escape_rdn
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from core.auth import AccessRefused, AuthError, security_event
from core.models import User, UserRole
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
MAX_USERNAME = 64


class DirectoryUnavailable(AuthError):
    """The directory could not be asked; nobody is refused or let in because of it."""


@dataclass(frozen=True)
class ExternalPerson:
    """Who the identity provider or directory says signed in, and their groups now."""

    source: str
    external_id: str
    username: str
    display_name: str
    groups: tuple[str, ...]


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


def provision(
    session: Session, mapping: IdentityMap, person: ExternalPerson, origin: Origin
) -> User:
    """The local user for an external person, created or brought up to date from their
    groups; refused (AccessRefused, audited) when no group of theirs is mapped."""
    # Two first sign-ins of one person at once: one creates the user, the other waits.
    lock_key = f"identity:{person.source}:{person.external_id}"
    session.execute(select(func.pg_advisory_xact_lock(func.hashtext(lock_key))))
    assignment = mapping.assign(person.groups)
    user = _by_external_id(session, person.source, person.external_id)
    seen = {"source": person.source, "groups": sorted(person.groups)}
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


class LdapDirectory:
    """Bind as the person (never anonymously); their groups come from the directory."""

    source = LDAP

    def __init__(self, settings: Settings, mapping: IdentityMap) -> None:
        assert settings.ldap_url is not None
        self.url = settings.ldap_url.rstrip("/")  # ldap3 takes no path, not even "/"
        self.user_dn_template = settings.ldap_user_dn_template
        self.group_base = settings.ldap_group_base
        self.timeout = settings.ldap_timeout_seconds
        self.mapping = mapping

    def sign_in(
        self, session: Session, username: str, password: str, origin: Origin
    ) -> User | None:
        # An empty password makes a simple bind "unauthenticated" (RFC 4513 5.1.2), which
        # many servers answer with success: it must never reach the directory.
        if not password or not username or len(username) > MAX_USERNAME:
            return None
        dn = self.user_dn_template.format(username=escape_rdn(username))
        try:
            server = ldap3.Server(self.url, connect_timeout=self.timeout, get_info=ldap3.NONE)
            connection = ldap3.Connection(
                server,
                user=dn,
                password=password,
                authentication=ldap3.SIMPLE,
                receive_timeout=max(1, round(self.timeout)),  # ldap3 packs it as an int
                read_only=True,
                raise_exceptions=False,
            )
        except LDAPException:
            raise DirectoryUnavailable("LDAP_URL is not a usable directory address") from None
        try:
            connection.open()
            if not connection.bind():
                if connection.result.get("result") == 49:  # invalidCredentials
                    return None
                raise DirectoryUnavailable(
                    "the directory refused to check your password; try again later"
                )
            person = self._person(connection, dn)
        except LDAPException:
            raise DirectoryUnavailable("the directory cannot be reached; try again later") from None
        finally:
            connection.unbind()
        if person is None:
            return None
        return provision(session, self.mapping, person, origin)

    def _person(self, connection: ldap3.Connection, dn: str) -> ExternalPerson | None:
        found = connection.search(
            dn, "(objectClass=*)", ldap3.BASE, attributes=["uid", "cn", "displayName"]
        )
        if not found or not connection.entries:
            return None
        entry = connection.entries[0]
        entry_dn = str(entry.entry_dn)
        uid = str(entry.uid.value) if "uid" in entry else None
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

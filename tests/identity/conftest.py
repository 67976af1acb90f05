"""The identity providers the tests sign in with: a real OpenLDAP `slapd` (Debian's
package) loaded with people and groups, and a real OIDC provider (oidc-provider-mock,
authlib underneath) on a free port. While these tests run, the app's settings point at
both; the rest of the suite never sees them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from oidc_provider_mock import run_server_in_thread
from pydantic import SecretStr
from sqlalchemy import select

from api.app import create_app
from core.db import SessionFactory
from core.models import AuditEvent, User
from core.repositories import users as users_repo
from core.runtime import Runtime
from tests.web.conftest import browser, live_server, page  # noqa: F401  (the browser tests' own)

SLAPD = Path("/usr/sbin/slapd")
SLAPADD = Path("/usr/sbin/slapadd")
SLAPPASSWD = Path("/usr/sbin/slappasswd")
SCHEMA = Path("/etc/ldap/schema")
SUFFIX = "dc=example,dc=com"
PEOPLE = f"ou=people,{SUFFIX}"
GROUPS = f"ou=groups,{SUFFIX}"
LDAP_PASSWORD = "directory-secret"
OIDC_CLIENT_ID = "backoffice"
OIDC_CLIENT_SECRET = "oidc-client-secret"

# uid -> (display name, groups): what the directory holds at the start.
DIRECTORY_PEOPLE = {
    "dana.finance": ("Dana Finance", ["finance-managers"]),
    "lee.twohats": ("Lee Twohats", ["risk-analysts", "ops-agents"]),
    "sam.nogroup": ("Sam Nogroup", ["canteen-committee"]),
    "ops.agent": ("Impostor With A Taken Name", ["backoffice-admins"]),
    "rob.removed": ("Rob Removed", ["finance-clerks"]),
    "max.clerk": ("Max Clerk", ["finance-clerks"]),  # a group keeps one member at least
}


def user_row(sessions: SessionFactory, username: str) -> tuple[User, frozenset[str]] | None:
    with sessions() as session:
        user = users_repo.by_username(session, username)
        if user is None:
            return None
        session.expunge(user)
        return user, users_repo.roles_of(session, user.id)


def events(sessions: SessionFactory, username: str, action: str) -> list[AuditEvent]:
    with sessions() as session:
        rows = session.execute(
            select(AuditEvent)
            .where(AuditEvent.stream == f"user:{username}", AuditEvent.action == action)
            .order_by(AuditEvent.seq)
        ).scalars()
        return list(rows)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ldif(password_hash: str) -> str:
    entries = [
        f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example",
        f"dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people",
        f"dn: {GROUPS}\nobjectClass: organizationalUnit\nou: groups",
    ]
    members: dict[str, list[str]] = {}
    for uid, (name, groups) in DIRECTORY_PEOPLE.items():
        entries.append(
            f"dn: uid={uid},{PEOPLE}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {name}\n"
            f"sn: {name.split()[-1]}\ndisplayName: {name}\nuserPassword: {password_hash}"
        )
        for group in groups:
            members.setdefault(group, []).append(f"uid={uid},{PEOPLE}")
    for group, dns in members.items():
        lines = "\n".join(f"member: {dn}" for dn in dns)
        entries.append(f"dn: cn={group},{GROUPS}\nobjectClass: groupOfNames\ncn: {group}\n{lines}")
    return "\n\n".join(entries) + "\n"


@dataclasses.dataclass(frozen=True)
class Directory:
    url: str
    admin_dn: str
    admin_password: str


@pytest.fixture(scope="package")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Directory]:
    """A real slapd with people and groups, on a free port, stopped at the end."""
    if not SLAPD.exists():
        pytest.fail("slapd is not installed: apt-get install slapd ldap-utils (see .ci/run)")
    root = tmp_path_factory.mktemp("slapd")
    (root / "data").mkdir()
    hashed = subprocess.run(
        [str(SLAPPASSWD), "-s", LDAP_PASSWORD], check=True, capture_output=True, text=True
    ).stdout.strip()
    admin_password = "admin-secret"
    conf = root / "slapd.conf"
    # `allow bind_anon_dn` makes this directory as lax as many in the wild: a DN with an
    # empty password binds "unauthenticated" and succeeds. The app must never send one.
    conf.write_text(
        "\n".join(
            [
                *(
                    f"include {SCHEMA / name}.schema"
                    for name in ("core", "cosine", "inetorgperson")
                ),
                f"pidfile {root / 'slapd.pid'}",
                f"argsfile {root / 'slapd.args'}",
                "modulepath /usr/lib/ldap",
                "moduleload back_mdb",
                "allow bind_anon_dn",
                "database mdb",
                f'suffix "{SUFFIX}"',
                f'rootdn "cn=admin,{SUFFIX}"',
                f"rootpw {admin_password}",
                f"directory {root / 'data'}",
                "access to attrs=userPassword by self write by anonymous auth by * none",
                "access to * by users read by * none",
                "",
            ]
        )
    )
    ldif = root / "people.ldif"
    ldif.write_text(_ldif(hashed))
    subprocess.run(
        [str(SLAPADD), "-f", str(conf), "-l", str(ldif)], check=True, capture_output=True
    )
    port = free_port()
    url = f"ldap://127.0.0.1:{port}/"
    process = subprocess.Popen(
        [str(SLAPD), "-h", url, "-f", str(conf), "-d", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"slapd exited: {process.stderr.read().decode() if process.stderr else ''}"
                )
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("slapd did not start listening within 15 s")
            time.sleep(0.05)
        yield Directory(url, f"cn=admin,{SUFFIX}", admin_password)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(root, ignore_errors=True)


@dataclasses.dataclass(frozen=True)
class Provider:
    issuer: str

    def set_person(self, sub: str, claims: dict[str, object]) -> None:
        """What the provider will say about `sub` at its next sign-in."""
        response = httpx.put(f"{self.issuer}/users/{sub}", json=claims, timeout=5)
        assert response.status_code == 204, response.text


@pytest.fixture(scope="package")
def oidc_provider() -> Iterator[Provider]:
    """A real OpenID provider (authorization code flow, signed ID tokens) on a free port."""
    with run_server_in_thread(port=free_port(), require_nonce=True) as server:
        yield Provider(f"http://localhost:{server.server_port}")


@pytest.fixture(scope="package", autouse=True)
def identity_settings(
    runtime: Runtime, slapd: Directory, oidc_provider: Provider
) -> Iterator[None]:
    """Point the running app at the directory and the provider while these tests run."""
    plain = runtime.settings
    runtime.settings = plain.model_copy(
        update={
            "oidc_issuer": oidc_provider.issuer,
            "oidc_client_id": OIDC_CLIENT_ID,
            "oidc_client_secret": SecretStr(OIDC_CLIENT_SECRET),
            "ldap_url": slapd.url,
            "ldap_user_dn_template": f"uid={{username}},{PEOPLE}",
            "ldap_group_base": GROUPS,
        }
    )
    try:
        yield
    finally:
        runtime.settings = plain


@pytest.fixture
async def browser_like(
    runtime: Runtime, oidc_provider: Provider
) -> AsyncIterator[httpx.AsyncClient]:
    """One person's browser: the app in-process at http://testserver, the provider over
    HTTP, one cookie jar for both (so redirects between them work as in a browser)."""
    app = httpx.ASGITransport(app=create_app(runtime))
    async with httpx.AsyncClient(
        base_url="http://testserver", mounts={"http://testserver": app}, timeout=10
    ) as client:
        yield client

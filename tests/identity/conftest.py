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
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
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
# People named cn=<display name> here: LDAP_USER_DN_TEMPLATE cannot derive their DN.
CONTRACTORS = f"ou=contractors,{SUFFIX}"
SERVICES = f"ou=services,{SUFFIX}"
SERVICE_DN = f"cn=backoffice-reader,{SERVICES}"
SERVICE_PASSWORD = "service-account-secret"
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
    "alex.inflight": ("Alex Inflight", ["finance-clerks"]),
    "jo.locked": ("Jo Locked", ["finance-clerks"]),
    "casey.parallel": ("Casey Parallel", ["finance-clerks"]),
    "twin.person": ("Twin In People", ["finance-clerks"]),
}
DIRECTORY_CONTRACTORS = {
    "pat.contractor": ("Pat Contractor", ["finance-clerks", "risk-analysts"]),
    "kim.contractor": ("Kim Contractor", ["ops-agents"]),
    "twin.person": ("Twin In Contractors", ["finance-clerks"]),  # two entries, one uid
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


def _ldif(password_hash: str, service_password_hash: str) -> str:
    entries = [
        f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example",
        f"dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people",
        f"dn: {CONTRACTORS}\nobjectClass: organizationalUnit\nou: contractors",
        f"dn: {GROUPS}\nobjectClass: organizationalUnit\nou: groups",
        f"dn: {SERVICES}\nobjectClass: organizationalUnit\nou: services",
        f"dn: {SERVICE_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n"
        f"cn: backoffice-reader\nuserPassword: {service_password_hash}",
    ]
    members: dict[str, list[str]] = {}
    people = [(f"uid={uid},{PEOPLE}", uid, *held) for uid, held in DIRECTORY_PEOPLE.items()]
    people += [
        (f"cn={held[0]},{CONTRACTORS}", uid, *held) for uid, held in DIRECTORY_CONTRACTORS.items()
    ]
    for dn, uid, name, groups in people:
        entries.append(
            f"dn: {dn}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {name}\n"
            f"sn: {name.split()[-1]}\ndisplayName: {name}\nuserPassword: {password_hash}"
        )
        for group in groups:
            members.setdefault(group, []).append(dn)
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
    hashed, service_hashed = (
        subprocess.run(
            [str(SLAPPASSWD), "-s", secret], check=True, capture_output=True, text=True
        ).stdout.strip()
        for secret in (LDAP_PASSWORD, SERVICE_PASSWORD)
    )
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
    ldif.write_text(_ldif(hashed, service_hashed))
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


def search_then_bind_settings(**update: object) -> dict[str, object]:
    """Settings updates for search-then-bind as the directory's service account."""
    return {
        "ldap_bind_dn": SERVICE_DN,
        "ldap_bind_password": SecretStr(SERVICE_PASSWORD),
        "ldap_user_search_base": SUFFIX,
        "ldap_user_filter": "(&(objectClass=inetOrgPerson)(uid={username}))",
        **update,
    }


@contextlib.contextmanager
def directory_settings(runtime: Runtime, **update: object) -> Iterator[None]:
    """The running app with some directory settings changed, for the `with` block."""
    working = runtime.settings
    runtime.settings = working.model_copy(update=update)
    try:
        yield
    finally:
        runtime.settings = working


class HeldDirectory:
    """A TCP front of the directory that holds every connection it accepts until the test
    lets it through to slapd or hangs up: a slow directory without sleeping."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("ldap://").rstrip("/").split(":")
        self.upstream = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"ldap://127.0.0.1:{self.listener.getsockname()[1]}/"
        self.accepted = threading.Event()
        self.connections = 0
        self._decided = threading.Event()
        self._pass_through = False
        self._sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                self._sockets.append(client)
                self.connections += 1
                self.accepted.set()
                threading.Thread(target=self._hold, args=(client,), daemon=True).start()

    def _hold(self, client: socket.socket) -> None:
        self._decided.wait()
        if not self._pass_through:
            client.close()
            return
        upstream = socket.create_connection(self.upstream)
        self._sockets.append(upstream)
        threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()
        self._pipe(client, upstream)

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)

    def wait_for_a_connection(self) -> None:
        assert self.accepted.wait(30), "nothing connected to the directory within 30 s"

    def let_through(self) -> None:
        self._pass_through = True
        self._decided.set()

    def hang_up(self) -> None:
        self._decided.set()

    def close(self) -> None:
        self._decided.set()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()


@pytest.fixture
def held_directory(slapd: Directory) -> Iterator[HeldDirectory]:
    held = HeldDirectory(slapd.url)
    try:
        yield held
    finally:
        held.close()


@pytest.fixture
def client_at(runtime: Runtime) -> Iterator[Callable[[str], httpx.AsyncClient]]:
    """API clients from their own address, so their failures do not throttle 127.0.0.1."""
    app = create_app(runtime)

    def make(ip: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, client=(ip, 50000))
        return httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=60)

    yield make


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

"""Directory sign-in: a real slapd checks the password, its groups give the roles."""

from __future__ import annotations

import subprocess

import httpx
import ldap3
import pytest
from sqlalchemy import func, select

from api.app import create_app
from core.identity import DirectoryUnavailable, LdapDirectory, identity_map_of
from core.models import User
from core.runtime import Runtime
from tests.conftest import HIDDEN_CSRF
from tests.identity.conftest import GROUPS, LDAP_PASSWORD, PEOPLE, Directory, events, user_row
from workflows.contracts import Origin


async def token_for(api: httpx.AsyncClient, username: str, password: str) -> httpx.Response:
    return await api.post("/api/v1/auth/token", json={"username": username, "password": password})


def user_count(sessions) -> int:
    with sessions() as session:
        return session.execute(select(func.count()).select_from(User)).scalar_one()


async def test_sign_in_through_the_login_form_provisions_from_the_directory(
    runtime: Runtime, sessions
):
    transport = httpx.ASGITransport(app=create_app(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as web:
        form = await web.get("/login")
        match = HIDDEN_CSRF.search(form.text)
        assert match
        signed_in = await web.post(
            "/login",
            data={
                "username": "dana.finance",
                "password": LDAP_PASSWORD,
                "csrf_token": match.group(1),
                "next": "/tasks",
            },
        )
        assert signed_in.status_code == 303, signed_in.text
        assert signed_in.headers["location"] == "/tasks"
        tasks = await web.get("/tasks")
        assert tasks.status_code == 200 and "Dana Finance" in tasks.text

    found = user_row(sessions, "dana.finance")
    assert found is not None
    user, roles = found
    assert roles == {"finance.manager"}
    assert user.auth_source == "ldap"
    assert user.external_id == f"uid=dana.finance,{PEOPLE}"
    [provisioned] = events(sessions, "dana.finance", "auth.user_provisioned")
    assert provisioned.after is not None and provisioned.after["groups"] == ["finance-managers"]


async def test_the_token_endpoint_signs_directory_people_in_with_all_their_groups(api):
    response = await token_for(api, "lee.twohats", LDAP_PASSWORD)
    assert response.status_code == 200, response.text
    me = await api.get(
        "/api/v1/me", headers={"Authorization": f"Bearer {response.json()['access_token']}"}
    )
    assert me.json()["roles"] == ["operations.agent", "risk.analyst"]
    assert me.json()["display_name"] == "Lee Twohats"


async def test_a_wrong_directory_password_is_401_and_counts_toward_lockout(api, sessions):
    assert (await token_for(api, "lee.twohats", LDAP_PASSWORD)).status_code == 200
    before = len(events(sessions, "lee.twohats", "auth.login_failed"))
    refused = await token_for(api, "lee.twohats", "not-the-password")
    assert refused.status_code == 401
    assert refused.json()["detail"] == "wrong username or password"
    failures = events(sessions, "lee.twohats", "auth.login_failed")
    assert len(failures) == before + 1 and failures[-1].after == {"reason": "ldap"}


async def test_someone_the_directory_does_not_know_is_401(api, sessions):
    users_before = user_count(sessions)
    for username in ("nobody.here", "*", "dana.finance,ou=people", "dana.finance)(uid=*"):
        refused = await token_for(api, username, LDAP_PASSWORD)
        assert refused.status_code == 401, (username, refused.text)
    assert user_count(sessions) == users_before


async def test_a_person_in_no_mapped_group_is_403_and_nothing_is_created(api, sessions):
    users_before = user_count(sessions)
    refused = await token_for(api, "sam.nogroup", LDAP_PASSWORD)
    assert refused.status_code == 403
    assert "not in any group that gives access" in refused.json()["detail"]
    assert user_count(sessions) == users_before
    [recorded] = events(sessions, "sam.nogroup", "auth.sso_refused")
    assert recorded.after == {
        "source": "ldap",
        "groups": ["canteen-committee"],
        "reason": "no mapped group",
    }


async def test_the_directory_cannot_take_over_a_local_account(api):
    """The directory has an `ops.agent` (in the admins' group); ours stays ours."""
    assert (await token_for(api, "ops.agent", LDAP_PASSWORD)).status_code == 401
    local = await token_for(api, "ops.agent", "backoffice")
    assert local.status_code == 200
    me = await api.get(
        "/api/v1/me", headers={"Authorization": f"Bearer {local.json()['access_token']}"}
    )
    assert "platform.admin" not in me.json()["roles"]


async def test_leaving_a_group_removes_the_role_at_next_sign_in(api, slapd: Directory, sessions):
    assert (await token_for(api, "rob.removed", LDAP_PASSWORD)).status_code == 200
    found = user_row(sessions, "rob.removed")
    assert found is not None and found[1] == {"finance.clerk"}

    with ldap3.Connection(
        slapd.url.rstrip("/"), slapd.admin_dn, slapd.admin_password, auto_bind=True
    ) as admin:
        assert admin.modify(
            f"cn=finance-clerks,{GROUPS}",
            {"member": [(ldap3.MODIFY_DELETE, [f"uid=rob.removed,{PEOPLE}"])]},
        ), admin.result

    refused = await token_for(api, "rob.removed", LDAP_PASSWORD)
    assert refused.status_code == 403
    found = user_row(sessions, "rob.removed")
    assert found is not None and found[1] == frozenset()
    [synced] = events(sessions, "rob.removed", "auth.roles_synced")
    assert synced.before == {"roles": ["finance.clerk"]}
    assert synced.after is not None and synced.after["roles"] == []


async def test_an_empty_password_never_reaches_the_directory(
    runtime: Runtime, api, slapd: Directory, sessions
):
    dn = f"uid=dana.finance,{PEOPLE}"
    # This directory, like many, lets a DN with an empty password bind "unauthenticated"
    # (Debian's own client shows it); ldap3 refuses to send one, but the app checks first.
    whoami = subprocess.run(
        ["ldapwhoami", "-x", "-H", slapd.url, "-D", dn, "-w", ""], capture_output=True, text=True
    )
    assert whoami.returncode == 0 and whoami.stdout.strip() == "anonymous", whoami

    directory = LdapDirectory(runtime.settings, identity_map_of(runtime))
    with sessions() as session:
        origin = Origin(channel="api")
        assert directory.sign_in(session, "dana.finance", "", origin) is None
    assert (await token_for(api, "dana.finance", "")).status_code == 422


def test_an_unreachable_directory_is_a_clear_503(runtime: Runtime, sessions):
    settings = runtime.settings.model_copy(
        update={"ldap_url": "ldap://127.0.0.1:1/", "ldap_timeout_seconds": 1.0}
    )
    directory = LdapDirectory(settings, identity_map_of(runtime))
    with sessions() as session, pytest.raises(DirectoryUnavailable, match="cannot be reached"):
        directory.sign_in(session, "dana.finance", LDAP_PASSWORD, Origin(channel="api"))


async def test_local_people_still_sign_in_with_their_password(api):
    assert (await token_for(api, "fin.clerk", "backoffice")).status_code == 200


async def test_the_login_form_says_why_a_directory_person_is_refused(runtime: Runtime, sessions):
    transport = httpx.ASGITransport(app=create_app(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as web:
        form = await web.get("/login")
        match = HIDDEN_CSRF.search(form.text)
        assert match
        refused = await web.post(
            "/login",
            data={"username": "sam.nogroup", "password": LDAP_PASSWORD, "csrf_token": match[1]},
        )
        assert refused.status_code == 403
        assert 'role="alert">You are not in any group that gives access' in refused.text
        assert web.cookies.get("bo_session") is None
    assert user_row(sessions, "sam.nogroup") is None


async def test_the_token_endpoint_answers_503_while_the_directory_is_down(runtime: Runtime, api):
    working = runtime.settings
    runtime.settings = working.model_copy(
        update={"ldap_url": "ldap://127.0.0.1:1/", "ldap_timeout_seconds": 1.0}
    )
    try:
        response = await token_for(api, "dana.finance", LDAP_PASSWORD)
        local = await token_for(api, "fin.clerk", "backoffice")
    finally:
        runtime.settings = working
    assert response.status_code == 503
    assert response.json()["detail"] == "the directory cannot be reached; try again later"
    assert local.status_code == 200  # local people are not held up by it

"""Directory sign-in: a real slapd checks the password, its groups give the roles."""

from __future__ import annotations

import asyncio
import re
import subprocess

import httpx
import ldap3
import pytest
from pydantic import SecretStr
from sqlalchemy import func, select

from api.app import create_app
from core.auth import SIGN_IN_LOCK_SPACE, AuthError, authenticate
from core.identity import DirectoryUnavailable, LdapDirectory, identity_map_of
from core.models import LoginAttempt, User
from core.runtime import Runtime
from core.settings import Settings
from tests.conftest import HIDDEN_CSRF
from tests.identity.conftest import (
    CONTRACTORS,
    GROUPS,
    LDAP_PASSWORD,
    PEOPLE,
    SERVICE_DN,
    Directory,
    HeldDirectory,
    directory_settings,
    events,
    search_then_bind_settings,
    user_row,
)
from workflows.contracts import Origin


async def token_for(api: httpx.AsyncClient, username: str, password: str) -> httpx.Response:
    return await api.post("/api/v1/auth/token", json={"username": username, "password": password})


def user_count(sessions) -> int:
    with sessions() as session:
        return session.execute(select(func.count()).select_from(User)).scalar_one()


def uncleared_failures(sessions, username: str) -> int:
    """What counts toward the username's lockout."""
    with sessions() as session:
        return session.execute(
            select(func.count())
            .select_from(LoginAttempt)
            .where(LoginAttempt.username == username, LoginAttempt.cleared_at.is_(None))
        ).scalar_one()


def sign_in_lock_is_free(sessions, username: str) -> bool:
    with sessions() as session:
        free = session.execute(
            select(func.pg_try_advisory_xact_lock(SIGN_IN_LOCK_SPACE, func.hashtext(username)))
        ).scalar_one()
        session.rollback()
        return bool(free)


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


@pytest.mark.parametrize("mode", ["dn template", "search then bind"])
async def test_an_empty_password_never_reaches_the_directory(
    runtime: Runtime, api, slapd: Directory, held_directory: HeldDirectory, sessions, mode
):
    dn = f"uid=dana.finance,{PEOPLE}"
    # This directory, like many, lets a DN with an empty password bind "unauthenticated"
    # (Debian's own client shows it); ldap3 refuses to send one, but the app checks first.
    whoami = subprocess.run(
        ["ldapwhoami", "-x", "-H", slapd.url, "-D", dn, "-w", ""], capture_output=True, text=True
    )
    assert whoami.returncode == 0 and whoami.stdout.strip() == "anonymous", whoami

    update = search_then_bind_settings() if mode == "search then bind" else {}
    settings = runtime.settings.model_copy(update={**update, "ldap_url": held_directory.url})
    directory = LdapDirectory(settings, identity_map_of(runtime))
    assert directory.check_password("dana.finance", "") is None
    with sessions() as session, pytest.raises(AuthError, match="wrong username or password"):
        authenticate(session, settings, "empty.password", "", Origin(channel="api"), directory)
    assert held_directory.connections == 0  # not even the service account was bound
    assert (await token_for(api, "dana.finance", "")).status_code == 422


def test_an_unreachable_directory_is_a_clear_503(runtime: Runtime):
    settings = runtime.settings.model_copy(
        update={"ldap_url": "ldap://127.0.0.1:1/", "ldap_timeout_seconds": 1.0}
    )
    directory = LdapDirectory(settings, identity_map_of(runtime))
    with pytest.raises(DirectoryUnavailable, match="cannot be reached"):
        directory.check_password("dana.finance", LDAP_PASSWORD)


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


# --- settings of search-then-bind -----------------------------------------------------------


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ({"LDAP_USER_FILTER": "(uid=dana.finance)"}, "{username} as its only placeholder"),
        ({"LDAP_USER_FILTER": "(uid={username}"}, "invalid filter"),
        ({"LDAP_USER_FILTER": "(uid={username})(cn=x)"}, "missing boolean operator"),
        ({"LDAP_USER_FILTER": "(&(uid={username})(cn={name}))"}, "unknown placeholder 'name'"),
        (
            {"LDAP_BIND_DN": SERVICE_DN, "LDAP_USER_SEARCH_BASE": "dc=example,dc=com"},
            "LDAP_BIND_PASSWORD must be set",
        ),
        (
            {"LDAP_BIND_DN": SERVICE_DN, "LDAP_BIND_PASSWORD": "", "LDAP_USER_SEARCH_BASE": "o=x"},
            "LDAP_BIND_PASSWORD must be set",
        ),
        ({"LDAP_BIND_DN": SERVICE_DN, "LDAP_BIND_PASSWORD": "s"}, "LDAP_USER_SEARCH_BASE must"),
    ],
)
def test_settings_refuse_an_unusable_search_configuration(update, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Settings(BACKOFFICE_ENV="dev", LDAP_URL="ldap://ldap.example.com", **update)


def test_settings_accept_an_active_directory_search():
    settings = Settings(
        BACKOFFICE_ENV="dev",
        LDAP_URL="ldaps://ad.example.com",
        LDAP_BIND_DN="CN=backoffice,OU=Service Accounts,DC=example,DC=com",
        LDAP_BIND_PASSWORD="service-secret",
        LDAP_USER_SEARCH_BASE="DC=example,DC=com",
        LDAP_USER_FILTER="(&(objectCategory=person)(sAMAccountName={username}))",
    )
    assert settings.ldap_bind_password is not None
    assert settings.ldap_user_filter.format(username="x") == (
        "(&(objectCategory=person)(sAMAccountName=x))"
    )


# --- search-then-bind against the real directory --------------------------------------------


async def test_people_whose_dn_the_template_cannot_derive_sign_in_by_search(
    runtime: Runtime, api, sessions
):
    assert (await token_for(api, "pat.contractor", LDAP_PASSWORD)).status_code == 401
    with directory_settings(runtime, **search_then_bind_settings()):
        response = await token_for(api, "pat.contractor", LDAP_PASSWORD)
        people_too = await token_for(api, "max.clerk", LDAP_PASSWORD)
    assert response.status_code == 200, response.text
    assert people_too.status_code == 200, people_too.text
    found = user_row(sessions, "pat.contractor")
    assert found is not None
    user, roles = found
    assert roles == {"finance.clerk", "risk.analyst"}
    assert user.external_id == f"cn=pat contractor,{CONTRACTORS}"
    assert user.display_name == "Pat Contractor"


async def test_search_then_bind_refuses_a_wrong_password_and_counts_it(
    runtime: Runtime, api, sessions
):
    with directory_settings(runtime, **search_then_bind_settings()):
        assert (await token_for(api, "kim.contractor", LDAP_PASSWORD)).status_code == 200
        refused = await token_for(api, "kim.contractor", "not-the-password")
    assert refused.status_code == 401
    assert refused.json()["detail"] == "wrong username or password"
    [failure] = events(sessions, "kim.contractor", "auth.login_failed")
    assert failure.after == {"reason": "ldap"}
    assert uncleared_failures(sessions, "kim.contractor") == 1


async def test_search_then_bind_finds_nobody_for_unknown_or_crafted_names(
    runtime: Runtime, api, sessions
):
    users_before = user_count(sessions)
    with directory_settings(runtime, **search_then_bind_settings()):
        for username in ("nobody.here", "*", "pat.contractor)(uid=*", "*)(|(uid=*"):
            counted_before = uncleared_failures(sessions, username)
            refused = await token_for(api, username, LDAP_PASSWORD)
            assert refused.status_code == 401, (username, refused.text)
            assert uncleared_failures(sessions, username) == counted_before + 1
    assert user_count(sessions) == users_before


async def test_two_entries_for_one_name_are_refused_and_recorded(runtime: Runtime, api, sessions):
    with directory_settings(runtime, **search_then_bind_settings()):
        refused = await token_for(api, "twin.person", LDAP_PASSWORD)
    assert refused.status_code == 403
    assert "more than one directory entry" in refused.json()["detail"]
    assert user_row(sessions, "twin.person") is None
    assert uncleared_failures(sessions, "twin.person") == 0
    [recorded] = events(sessions, "twin.person", "auth.directory_ambiguous")
    assert recorded.sensitivity == "security" and recorded.actor == "system"
    assert recorded.after is not None and recorded.after["source"] == "ldap"
    assert sorted(recorded.after["dns"]) == [
        f"cn=Twin In Contractors,{CONTRACTORS}",
        f"uid=twin.person,{PEOPLE}",
    ]


async def test_a_refused_service_account_is_503_and_not_the_persons_failure(
    runtime: Runtime, api, sessions
):
    wrong_service = search_then_bind_settings(ldap_bind_password=SecretStr("not-it"))
    with directory_settings(runtime, **wrong_service):
        refused = await token_for(api, "dana.finance", LDAP_PASSWORD)
    assert refused.status_code == 503
    assert "refused the backoffice's service account" in refused.json()["detail"]
    assert uncleared_failures(sessions, "dana.finance") == 0
    assert not events(sessions, "dana.finance", "auth.login_failed")
    recorded = events(sessions, "dana.finance", "auth.directory_unavailable")[-1]
    assert recorded.after == {
        "source": "ldap",
        "reason": "service account refused",
        "bind_dn": SERVICE_DN,
    }


async def test_the_login_form_says_the_directory_is_unavailable(runtime: Runtime, sessions):
    transport = httpx.ASGITransport(app=create_app(runtime))
    wrong_service = search_then_bind_settings(ldap_bind_password=SecretStr("not-it"))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as web:
        form = await web.get("/login")
        match = HIDDEN_CSRF.search(form.text)
        assert match
        with directory_settings(runtime, **wrong_service):
            refused = await web.post(
                "/login",
                data={"username": "max.clerk", "password": LDAP_PASSWORD, "csrf_token": match[1]},
            )
        assert refused.status_code == 503
        assert 'role="alert">The directory refused the backoffice&#39;s service account' in (
            refused.text
        )
        assert web.cookies.get("bo_session") is None
    assert uncleared_failures(sessions, "max.clerk") == 0


async def test_search_then_bind_against_a_directory_that_is_down_is_503(
    runtime: Runtime, api, sessions
):
    down = search_then_bind_settings(ldap_url="ldap://127.0.0.1:1/", ldap_timeout_seconds=1.0)
    with directory_settings(runtime, **down):
        refused = await token_for(api, "pat.contractor", LDAP_PASSWORD)
    assert refused.status_code == 503
    assert refused.json()["detail"] == "the directory cannot be reached; try again later"
    recorded = events(sessions, "pat.contractor", "auth.directory_unavailable")[-1]
    assert recorded.after == {"source": "ldap", "reason": "unreachable"}


# --- the directory is asked with no transaction open ---------------------------------------


@pytest.mark.parametrize("mode", ["dn template", "search then bind"])
async def test_a_slow_directory_holds_no_sign_in_lock(
    runtime: Runtime, api, held_directory: HeldDirectory, sessions, mode
):
    username = "dana.finance"
    update = search_then_bind_settings() if mode == "search then bind" else {}
    slow = {**update, "ldap_url": held_directory.url, "ldap_timeout_seconds": 60.0}
    with directory_settings(runtime, **slow):
        signing_in = asyncio.create_task(token_for(api, username, LDAP_PASSWORD))
        await asyncio.to_thread(held_directory.wait_for_a_connection)
        # The sign-in is now waiting on the directory: its username's lock is free.
        lock_was_free = sign_in_lock_is_free(sessions, username)
        held_directory.hang_up()
        answered = await signing_in
    assert lock_was_free
    assert answered.status_code == 503
    assert uncleared_failures(sessions, username) == 0


async def test_a_locked_username_is_refused_before_the_directory_is_asked(
    runtime: Runtime, client_at, held_directory: HeldDirectory
):
    async with client_at("198.51.100.1") as api:
        for _ in range(runtime.settings.login_max_failures - 1):
            assert (await token_for(api, "jo.locked", "guess")).status_code == 401
        assert (await token_for(api, "jo.locked", "guess")).status_code == 429
        with directory_settings(runtime, ldap_url=held_directory.url):
            refused = await token_for(api, "jo.locked", LDAP_PASSWORD)
    assert refused.status_code == 429
    assert held_directory.connections == 0


async def test_a_sign_in_the_lockout_overtook_is_refused_when_the_directory_answers(
    runtime: Runtime, client_at, held_directory: HeldDirectory, slapd: Directory, sessions
):
    """The right password, slow to be checked, while guesses lock the account meanwhile:
    it gets no answer the lockout would not have given, as if it had queued behind them."""
    username = "alex.inflight"
    async with client_at("198.51.100.2") as api:
        with directory_settings(runtime, ldap_url=held_directory.url):
            in_flight = asyncio.create_task(token_for(api, username, LDAP_PASSWORD))
            await asyncio.to_thread(held_directory.wait_for_a_connection)
        for _ in range(runtime.settings.login_max_failures - 1):
            assert (await token_for(api, username, "guess")).status_code == 401
        assert (await token_for(api, username, "guess")).status_code == 429
        held_directory.let_through()
        answered = await in_flight
    assert answered.status_code == 429, answered.text
    assert user_row(sessions, username) is None


async def test_parallel_guesses_cannot_outrun_the_lockout_of_directory_people(
    runtime: Runtime, client_at
):
    """Thirty guesses at once against a directory person: at most the limit reach the
    directory, and the right password afterwards waits too. (Among the guesses it would
    clear the count whenever it happened to run early.)"""
    username = "casey.parallel"
    limit = runtime.settings.login_max_failures
    guesses = [f"guess-{n}" for n in range(30)]
    async with client_at("198.51.100.3") as api:
        answers = await asyncio.gather(*(token_for(api, username, g) for g in guesses))
        right_password_after = await token_for(api, username, LDAP_PASSWORD)
    statuses = [answer.status_code for answer in answers]
    assert set(statuses) == {401, 429}
    assert statuses.count(401) <= limit
    assert statuses.count(429) >= len(guesses) - limit
    assert right_password_after.status_code == 429

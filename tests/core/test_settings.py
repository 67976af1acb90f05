"""Settings refuse development placeholders outside dev mode, naming the variable."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from core.settings import DEV_PLACEHOLDER_SECRET, Settings

GOOD = "g" * 40


def test_dev_mode_accepts_the_placeholders():
    settings = Settings(BACKOFFICE_ENV="dev")
    assert settings.secret_key.get_secret_value() == DEV_PLACEHOLDER_SECRET


@pytest.mark.parametrize("name", ["SECRET_KEY", "AUDIT_SIGNING_KEY"])
def test_production_refuses_a_placeholder_naming_it(name, monkeypatch):
    for variable in ("SECRET_KEY", "AUDIT_SIGNING_KEY"):
        monkeypatch.setenv(variable, GOOD)
    monkeypatch.setenv(name, DEV_PLACEHOLDER_SECRET)
    with pytest.raises(ValidationError, match=name):
        Settings(BACKOFFICE_ENV="production")


def test_production_refuses_a_short_secret(monkeypatch):
    monkeypatch.setenv("SECRET_KEY", "short")
    monkeypatch.setenv("AUDIT_SIGNING_KEY", GOOD)
    with pytest.raises(ValidationError, match="SECRET_KEY"):
        Settings(BACKOFFICE_ENV="production")


def test_production_refuses_a_short_scim_token(monkeypatch):
    monkeypatch.setenv("SECRET_KEY", GOOD)
    monkeypatch.setenv("AUDIT_SIGNING_KEY", GOOD)
    monkeypatch.setenv("SCIM_TOKEN", "guessable")
    with pytest.raises(ValidationError, match="SCIM_TOKEN"):
        Settings(BACKOFFICE_ENV="production")
    monkeypatch.setenv("SCIM_TOKEN", GOOD)
    assert Settings(BACKOFFICE_ENV="production").scim_token is not None


def test_trusting_every_proxy_is_refused():
    with pytest.raises(ValidationError, match="TRUSTED_PROXIES"):
        Settings(BACKOFFICE_ENV="dev", TRUSTED_PROXIES="10.0.0.1, *")
    assert Settings(BACKOFFICE_ENV="dev", TRUSTED_PROXIES="10.0.0.0/8").trusted_proxies


def test_seed_is_refused_outside_dev_mode(monkeypatch):
    from core import cli

    monkeypatch.setenv("SECRET_KEY", GOOD)
    monkeypatch.setenv("AUDIT_SIGNING_KEY", GOOD)
    monkeypatch.setenv("BACKOFFICE_ENV", "production")
    with pytest.raises(SystemExit, match="only in dev mode"):
        cli.main(["seed"])


def test_cli_names_the_placeholder_variable(monkeypatch):
    from core import cli

    monkeypatch.setenv("SECRET_KEY", GOOD)
    monkeypatch.setenv("AUDIT_SIGNING_KEY", DEV_PLACEHOLDER_SECRET)
    monkeypatch.setenv("BACKOFFICE_ENV", "production")
    with pytest.raises(SystemExit) as info:
        cli.main(["migrate"])
    assert "AUDIT_SIGNING_KEY must be set" in str(info.value)

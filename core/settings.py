"""The one settings object. Values come from the environment (or a .env file)."""

from __future__ import annotations

from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEV_PLACEHOLDER_SECRET = "dev-only-change-me-dev-only-change-me"

# Secrets that must be changed outside dev mode, by environment variable name.
_GUARDED_SECRETS = ("SECRET_KEY", "AUDIT_SIGNING_KEY")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    env: Literal["dev", "production"] = Field(default="production", alias="BACKOFFICE_ENV")
    data_dir: Path = Field(default=PROJECT_ROOT / "var", alias="BACKOFFICE_DATA_DIR")

    database_url: str | None = Field(default=None, alias="DATABASE_URL")
    temporal_address: str | None = Field(default=None, alias="TEMPORAL_ADDRESS")
    temporal_namespace: str = Field(default="default", alias="TEMPORAL_NAMESPACE")
    task_queue: str = Field(default="backoffice", alias="TEMPORAL_TASK_QUEUE")

    web_host: str = Field(default="127.0.0.1", alias="WEB_HOST")
    web_port: int = Field(default=8000, alias="WEB_PORT")
    temporal_port: int = Field(default=7233, alias="TEMPORAL_PORT")
    temporal_ui_port: int = Field(default=8233, alias="TEMPORAL_UI_PORT")

    secret_key: SecretStr = Field(default=SecretStr(DEV_PLACEHOLDER_SECRET), alias="SECRET_KEY")
    audit_signing_key: SecretStr = Field(
        default=SecretStr(DEV_PLACEHOLDER_SECRET), alias="AUDIT_SIGNING_KEY"
    )
    access_token_minutes: int = Field(default=15, ge=1, alias="ACCESS_TOKEN_MINUTES")
    refresh_token_days: int = Field(default=7, ge=1, alias="REFRESH_TOKEN_DAYS")
    # However often a refresh token is rotated, its sign-in ends this long after the password.
    refresh_family_days: int = Field(default=30, ge=1, alias="REFRESH_FAMILY_DAYS")
    session_hours: int = Field(default=12, ge=1, alias="SESSION_HOURS")
    session_idle_minutes: int = Field(default=30, ge=1, alias="SESSION_IDLE_MINUTES")
    max_sessions_per_user: int = Field(default=5, ge=1, alias="MAX_SESSIONS_PER_USER")

    # Login throttling: this many failures for one username inside the window lock it for
    # the lockout; an IP address with this many failures (any usernames) is refused too.
    login_max_failures: int = Field(default=5, ge=1, alias="LOGIN_MAX_FAILURES")
    login_window_minutes: int = Field(default=15, ge=1, alias="LOGIN_WINDOW_MINUTES")
    login_lockout_minutes: int = Field(default=15, ge=1, alias="LOGIN_LOCKOUT_MINUTES")
    login_ip_max_failures: int = Field(default=100, ge=1, alias="LOGIN_IP_MAX_FAILURES")

    # TOTP: the issuer shown in authenticator apps; how long a password-only sign-in may
    # wait for its code; how recent an MFA check must be before a high-risk approval.
    mfa_issuer: str = Field(default="Backoffice Admin", alias="MFA_ISSUER")
    mfa_pending_minutes: int = Field(default=5, ge=1, alias="MFA_PENDING_MINUTES")
    step_up_minutes: int = Field(default=5, ge=1, alias="STEP_UP_MINUTES")
    # An approval is high-risk (needs a fresh code) from this amount (EUR) or for these actions.
    step_up_amount: Decimal = Field(default=Decimal("10000"), gt=0, alias="STEP_UP_AMOUNT")
    step_up_actions: list[str] = Field(
        default_factory=lambda: ["player.close", "risk_rule.change"], alias="STEP_UP_ACTIONS"
    )
    cookie_secure: bool = Field(default=False, alias="COOKIE_SECURE")
    # Off only for load tests driven from the machine itself (bench/), never in service.
    api_rate_limits: bool = Field(default=True, alias="API_RATE_LIMITS")

    platform_url: str | None = Field(default=None, alias="PLATFORM_URL")
    platform_secret: SecretStr = Field(
        default=SecretStr(DEV_PLACEHOLDER_SECRET), alias="PLATFORM_SECRET"
    )
    platform_timeout_seconds: float = Field(default=10.0, gt=0, alias="PLATFORM_TIMEOUT_SECONDS")

    policies_dir: Path = Field(default=PROJECT_ROOT / "policies", alias="POLICIES_DIR")

    # Single sign-on (OIDC, authorization code flow with PKCE): on when all three are set.
    oidc_issuer: str | None = Field(default=None, alias="OIDC_ISSUER")
    oidc_client_id: str | None = Field(default=None, alias="OIDC_CLIENT_ID")
    oidc_client_secret: SecretStr | None = Field(default=None, alias="OIDC_CLIENT_SECRET")
    oidc_groups_claim: str = Field(default="groups", min_length=1, alias="OIDC_GROUPS_CLAIM")
    # Directory sign-in (LDAP bind) through the login form and the token endpoint: on with
    # LDAP_URL. {username} in the template is the escaped login name.
    ldap_url: str | None = Field(default=None, alias="LDAP_URL")
    ldap_user_dn_template: str = Field(
        default="uid={username},ou=people,dc=example,dc=com", alias="LDAP_USER_DN_TEMPLATE"
    )
    ldap_group_base: str = Field(default="ou=groups,dc=example,dc=com", alias="LDAP_GROUP_BASE")
    ldap_timeout_seconds: float = Field(default=5.0, gt=0, alias="LDAP_TIMEOUT_SECONDS")
    # SCIM 2.0 provisioning at /scim/v2: on when set; the identity provider sends it as
    # its bearer token.
    scim_token: SecretStr | None = Field(default=None, alias="SCIM_TOKEN")

    @property
    def oidc_enabled(self) -> bool:
        return bool(self.oidc_issuer and self.oidc_client_id and self.oidc_client_secret)

    @property
    def ldap_enabled(self) -> bool:
        return bool(self.ldap_url)

    @property
    def is_dev(self) -> bool:
        return self.env == "dev"

    @model_validator(mode="after")
    def _refuse_placeholder_secrets(self) -> Settings:
        if self.is_dev:
            return self
        guarded = [*_GUARDED_SECRETS, *(["PLATFORM_SECRET"] if self.platform_url else [])]
        for name in guarded:
            value: SecretStr = getattr(self, name.lower())
            secret = value.get_secret_value()
            if secret == DEV_PLACEHOLDER_SECRET or len(secret) < 32:
                raise ValueError(
                    f"{name} must be set to a random value of 32+ characters outside dev mode "
                    f"(BACKOFFICE_ENV={self.env})"
                )
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()

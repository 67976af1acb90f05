"""The one settings object. Values come from the environment (or a .env file)."""

from __future__ import annotations

from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Literal

from ldap3.core.exceptions import LDAPInvalidFilterError
from ldap3.operation.search import parse_filter
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
    # Proxies whose X-Forwarded-For names the client (comma-separated addresses or networks):
    # behind a load balancer, without it every client shares the proxy's address, and the
    # per-address sign-in and credential throttles would hold them all back together.
    trusted_proxies: str = Field(default="127.0.0.1", alias="TRUSTED_PROXIES")
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
        default_factory=lambda: [
            "player.close",
            "risk_rule.change",
            "policy.role_change",
            "access.elevation",
        ],
        alias="STEP_UP_ACTIONS",
    )
    # A high-risk approval by someone with no second factor set up: refused (they are told
    # to set one up). Off only where people cannot enrol yet, e.g. a migration period.
    step_up_requires_mfa: bool = Field(default=True, alias="STEP_UP_REQUIRES_MFA")
    cookie_secure: bool = Field(default=False, alias="COOKIE_SECURE")
    # Off only for load tests driven from the machine itself (bench/), never in service.
    api_rate_limits: bool = Field(default=True, alias="API_RATE_LIMITS")
    # Refused machine credentials (API keys, bearer tokens, the SCIM token) per client
    # address: this many at once, refilled at this rate an hour. Each is audited while the
    # address has budget; beyond it the refusal is a 429 and only the throttling is audited.
    credential_failures_per_hour: int = Field(
        default=60, ge=1, le=1_000_000, alias="CREDENTIAL_FAILURES_PER_HOUR"
    )
    credential_failures_burst: int = Field(
        default=100, ge=1, le=100_000, alias="CREDENTIAL_FAILURES_BURST"
    )

    # CSV exports streaming at once in one web process: each holds a database connection
    # and a snapshot until its client has the last row; one more is refused with a 429.
    exports_at_once: int = Field(default=4, ge=1, le=100, alias="EXPORTS_AT_ONCE")

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
    # LDAP_URL. {username} in the template and the filter is the escaped login name.
    ldap_url: str | None = Field(default=None, alias="LDAP_URL")
    ldap_user_dn_template: str = Field(
        default="uid={username},ou=people,dc=example,dc=com", alias="LDAP_USER_DN_TEMPLATE"
    )
    # Search-then-bind, when the DN cannot be derived from the login name: with LDAP_BIND_DN
    # a service account finds the one entry LDAP_USER_FILTER matches under the search base.
    ldap_bind_dn: str | None = Field(default=None, alias="LDAP_BIND_DN")
    ldap_bind_password: SecretStr | None = Field(default=None, alias="LDAP_BIND_PASSWORD")
    ldap_user_search_base: str | None = Field(default=None, alias="LDAP_USER_SEARCH_BASE")
    ldap_user_filter: str = Field(default="(uid={username})", alias="LDAP_USER_FILTER")
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
    def _check_ldap_search(self) -> Settings:
        wanted = "LDAP_USER_FILTER must be an LDAP filter with {username} as its only placeholder"
        if "{username}" not in self.ldap_user_filter:
            raise ValueError(f"{wanted}, e.g. (uid={{username}})")
        try:
            example = self.ldap_user_filter.format(username="someone")
            parse_filter(example, None, False, True, None, False)
        except KeyError as exc:
            raise ValueError(f"{wanted}: unknown placeholder {exc}") from None
        except (IndexError, ValueError, LDAPInvalidFilterError) as exc:
            raise ValueError(f"{wanted}: {exc}") from None
        if self.ldap_bind_dn:
            if self.ldap_bind_password is None or not self.ldap_bind_password.get_secret_value():
                # An empty password would bind "unauthenticated" and pass on many servers.
                raise ValueError("LDAP_BIND_PASSWORD must be set when LDAP_BIND_DN is")
            if not self.ldap_user_search_base:
                raise ValueError("LDAP_USER_SEARCH_BASE must be set when LDAP_BIND_DN is")
        return self

    @model_validator(mode="after")
    def _refuse_trusting_every_proxy(self) -> Settings:
        # With "*" the left-most X-Forwarded-For entry, which the client writes, would be
        # taken for its address: any client could pick a new one for every attempt.
        if "*" in (p.strip() for p in self.trusted_proxies.split(",")):
            raise ValueError(
                "TRUSTED_PROXIES must list the proxies' addresses or networks, not '*'"
            )
        return self

    @model_validator(mode="after")
    def _refuse_placeholder_secrets(self) -> Settings:
        if self.is_dev:
            return self
        guarded = [
            *_GUARDED_SECRETS,
            *(["PLATFORM_SECRET"] if self.platform_url else []),
            # A wrong SCIM token is throttled per address, not refused outright: only its
            # length keeps it out of reach of guessing from many addresses.
            *(["SCIM_TOKEN"] if self.scim_token is not None else []),
        ]
        for name in guarded:
            value = getattr(self, name.lower())
            assert isinstance(value, SecretStr)
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

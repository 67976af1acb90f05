"""The one settings object. Values come from the environment (or a .env file)."""

from __future__ import annotations

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
    session_hours: int = Field(default=12, ge=1, alias="SESSION_HOURS")
    cookie_secure: bool = Field(default=False, alias="COOKIE_SECURE")

    platform_url: str | None = Field(default=None, alias="PLATFORM_URL")
    platform_secret: SecretStr = Field(
        default=SecretStr(DEV_PLACEHOLDER_SECRET), alias="PLATFORM_SECRET"
    )
    platform_timeout_seconds: float = Field(default=10.0, gt=0, alias="PLATFORM_TIMEOUT_SECONDS")

    policies_dir: Path = Field(default=PROJECT_ROOT / "policies", alias="POLICIES_DIR")

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

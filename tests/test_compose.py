"""Static checks of the production topology: docker-compose.yml and the Dockerfile.

Docker is not needed: the files are parsed, not run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

REQUIRED_SERVICES = {"postgres", "temporal", "temporal-ui", "migrate", "web", "worker"}
APP_SERVICES = ("migrate", "web", "worker")


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict), "docker-compose.yml must be a mapping"
    assert isinstance(data.get("services"), dict), "docker-compose.yml has no services mapping"
    return data


def _services() -> dict[str, dict[str, Any]]:
    return _compose()["services"]


def _environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a dict, from either the mapping or the list form."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.split("=", 1) if "=" in item else (item, "") for item in env)
        return {key: value for key, value in pairs}
    return {str(key): "" if value is None else str(value) for key, value in env.items()}


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command")
    if command is None:
        return []
    return command.split() if isinstance(command, str) else [str(part) for part in command]


def _dockerfile_stages() -> list[list[tuple[str, str]]]:
    """Dockerfile instructions as (KEYWORD, arguments), grouped by build stage."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    if pending:
        logical.append(pending)

    stages: list[list[tuple[str, str]]] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stages.append([])
        if keyword != "ARG" or stages:
            assert stages, f"instruction before the first FROM: {line!r}"
            stages[-1].append((keyword, args.strip()))
    return stages


def test_compose_names_every_service() -> None:
    services = _services()
    missing = REQUIRED_SERVICES - services.keys()
    assert not missing, f"docker-compose.yml lacks services: {sorted(missing)}"


def test_postgres_is_postgres_16_with_a_pg_isready_healthcheck_and_a_named_volume() -> None:
    compose = _compose()
    postgres = compose["services"]["postgres"]
    assert str(postgres.get("image", "")).startswith("postgres:16")
    test = postgres.get("healthcheck", {}).get("test")
    assert test, "postgres has no healthcheck"
    assert "pg_isready" in (test if isinstance(test, str) else " ".join(test))

    named_volumes = set((compose.get("volumes") or {}).keys())
    mounts = [str(v).split(":", 1)[0] for v in postgres.get("volumes", []) if isinstance(v, str)]
    assert any(m in named_volumes for m in mounts), "postgres data is not on a named volume"


def test_temporal_runs_on_the_postgres_service() -> None:
    services = _services()
    temporal = services["temporal"]
    assert str(temporal.get("image", "")).startswith("temporalio/auto-setup:")
    env = _environment(temporal)
    assert env.get("DB") == "postgres12"
    assert env.get("POSTGRES_SEEDS") == "postgres"
    assert env.get("DB_PORT") == "5432"
    assert env.get("POSTGRES_USER") and env.get("POSTGRES_PWD")
    depends = temporal.get("depends_on")
    assert isinstance(depends, dict), "temporal must wait for postgres to be healthy"
    assert depends["postgres"]["condition"] == "service_healthy"

    ui_env = _environment(services["temporal-ui"])
    assert ui_env.get("TEMPORAL_ADDRESS") == "temporal:7233"


def test_app_services_share_one_image() -> None:
    services = _services()
    web, worker, migrate = services["web"], services["worker"], services["migrate"]
    assert web.get("build") or web.get("image"), "web names neither a build nor an image"
    for other in (worker, migrate):
        assert other.get("build") == web.get("build")
        assert other.get("image") == web.get("image")
    if web.get("build"):
        build = web["build"]
        context = build if isinstance(build, str) else build.get("context", ".")
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "")
        assert (ROOT / context / (dockerfile or "Dockerfile")).resolve() == DOCKERFILE


def test_app_services_run_their_role() -> None:
    services = _services()
    for name in APP_SERVICES:
        assert _command(services[name]) == ["backoffice", name], name


def test_app_services_point_at_the_compose_postgres_and_temporal() -> None:
    services = _services()
    for name in APP_SERVICES:
        env = _environment(services[name])
        url = env.get("DATABASE_URL", "")
        assert re.match(r"postgresql(\+psycopg)?://[^@/]+@postgres:5432/\w+$", url), (name, url)
        assert env.get("TEMPORAL_ADDRESS") == "temporal:7233", name


def test_no_app_service_runs_in_dev_mode() -> None:
    services = _services()
    for name in APP_SERVICES:
        env = _environment(services[name])
        assert env.get("BACKOFFICE_ENV", "production").strip().lower() != "dev", name


def test_secrets_come_from_the_environment_and_are_required() -> None:
    services = _services()
    for name in APP_SERVICES:
        env = _environment(services[name])
        for key in ("SECRET_KEY", "AUDIT_SIGNING_KEY"):
            value = env.get(key, "")
            # `${KEY:?message}` makes compose refuse to start when the variable is unset.
            assert value.startswith("${" + key + ":?"), (name, key, value)


def test_start_order_migrate_once_then_web_and_worker() -> None:
    services = _services()
    migrate = services["migrate"]
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert str(migrate.get("restart", "no")) == "no", "migrate must run once, not be restarted"
    for name in ("web", "worker"):
        depends = services[name].get("depends_on")
        assert isinstance(depends, dict), name
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert "temporal" in depends, name


def test_web_publishes_8000_and_checks_readyz() -> None:
    web = _services()["web"]
    assert any(str(p).endswith(":8000") for p in web.get("ports", []))
    test = web.get("healthcheck", {}).get("test")
    assert test, "web has no healthcheck"
    joined = test if isinstance(test, str) else " ".join(test)
    assert "http://127.0.0.1:8000/readyz" in joined
    assert "curl" not in joined and "wget" not in joined, "the slim image has neither"


def test_dockerfile_final_stage_runs_backoffice_as_non_root() -> None:
    assert DOCKERFILE.is_file(), "Dockerfile is missing"
    stages = _dockerfile_stages()
    assert len(stages) >= 2, "expected a multi-stage build (node assets stage + python)"
    final = stages[-1]
    assert final[0][1].split()[0].startswith("python:3.11-slim")

    cmds = [args for keyword, args in final if keyword == "CMD"]
    assert cmds, "the final stage has no CMD"
    cmd = cmds[-1]
    words = json.loads(cmd) if cmd.startswith("[") else cmd.split()
    assert words[:1] == ["backoffice"], cmd
    assert words == ["backoffice", "web"], cmd

    users = [args for keyword, args in final if keyword == "USER"]
    assert users, "the final stage runs as root"
    assert users[-1].split(":")[0] not in {"root", "0"}

    assert ("EXPOSE", "8000") in final
    final_text = " ".join(args for _, args in final)
    assert "npm" not in final_text, "Node must stay in the build stage"


def test_dockerfile_fetches_htmx_in_a_node_stage() -> None:
    stages = _dockerfile_stages()
    node_stages = [s for s in stages if s[0][1].split()[0].startswith("node:")]
    assert node_stages, "no node build stage"
    node_text = " ".join(args for _, args in node_stages[0])
    assert "npm install" in node_text
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert "node_modules/htmx.org/dist/htmx.min.js" in text
    assert "web/static/vendor/htmx.min.js" in text

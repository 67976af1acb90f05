"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from api.routers import (
    api_keys,
    audit,
    auth,
    delegations,
    health,
    jit,
    platform,
    requests,
    role_admin,
    roles,
    scim,
    tasks,
)
from core.db import make_engine, make_session_factory
from core.events import EventHub, libpq_url
from core.exports import ExportSlots
from core.request_service import RequestError
from core.runtime import Runtime
from core.settings import Settings, get_settings
from core.temporal import connect
from policies.engine import PolicyEngine
from web import account as web_account
from web import api_keys as web_api_keys
from web import delegations as web_delegations
from web import exports as web_exports
from web import jit as web_jit
from web import queue as web_queue
from web import role_admin as web_role_admin
from web import routes as web_routes
from web import sso as web_sso
from web import workspaces as web_workspaces

STATIC_DIR = Path(__file__).resolve().parent.parent / "web" / "static"


async def build_runtime(settings: Settings, database_url: str, temporal_address: str) -> Runtime:
    engine = make_engine(database_url)
    return Runtime(
        settings=settings,
        engine=engine,
        sessions=make_session_factory(engine),
        temporal=await connect(temporal_address, settings.temporal_namespace),
        policy=PolicyEngine.load(settings.policies_dir),
        task_queue=settings.task_queue,
    )


def _readable(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        location = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        parts.append(f"{location}: {error.get('msg')}" if location else str(error.get("msg")))
    return "; ".join(parts) or "invalid request"


def create_app(runtime: Runtime | None = None) -> FastAPI:
    """With a runtime (tests, `backoffice dev`) use it; else build one from the settings."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        active = runtime
        if active is None:
            settings = get_settings()
            if not settings.database_url or not settings.temporal_address:
                raise RuntimeError("backoffice web needs DATABASE_URL and TEMPORAL_ADDRESS")
            active = await build_runtime(settings, settings.database_url, settings.temporal_address)
        app.state.runtime = active
        app.state.export_slots = ExportSlots(active.settings.exports_at_once)
        hub = EventHub(libpq_url(active.engine))
        app.state.events = hub
        hub.start()
        try:
            yield
        finally:
            await hub.stop()
            if runtime is None:
                active.engine.dispose()

    app = FastAPI(
        title="Backoffice Admin",
        version="1.0.0",
        description="Approvals, audit and operations for an online casino and sportsbook.",
        lifespan=lifespan,
    )
    if runtime is not None:
        app.state.runtime = runtime
        app.state.export_slots = ExportSlots(runtime.settings.exports_at_once)

    @app.middleware("http")
    async def refuse_nul_in_url(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        # PostgreSQL cannot store or compare text with NUL: refuse it before any query.
        raw = request.scope.get("query_string", b"") + request.scope.get("raw_path", b"")
        if b"%00" in raw.lower() or b"\x00" in raw or "\x00" in request.url.path:
            return JSONResponse({"detail": "the URL contains a NUL character"}, status_code=400)
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")}
            for e in exc.errors()
        ]
        return JSONResponse({"detail": _readable(exc), "errors": errors}, status_code=422)

    @app.exception_handler(RequestError)
    async def refused(request: Request, exc: RequestError) -> JSONResponse:
        """A service's refusal (policy, state, bad input) as the API's 4xx with a detail."""
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    app.add_exception_handler(web_routes.LoginRequired, web_routes.login_required_handler)
    app.add_exception_handler(web_routes.CsrfRefused, web_routes.csrf_refused_handler)
    for module in (
        health,
        auth,
        requests,
        tasks,
        delegations,
        roles,
        role_admin,
        jit,
        api_keys,
        scim,
        platform,
        audit,
    ):
        app.include_router(module.router)
    for page_module in (
        web_routes,
        web_queue,
        web_delegations,
        web_api_keys,
        web_jit,
        web_account,
        web_sso,
        web_role_admin,
        web_exports,
        web_workspaces,
    ):
        app.include_router(page_module.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app

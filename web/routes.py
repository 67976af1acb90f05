"""The HTMX pages. Plain handlers: a full page normally, a fragment for htmx requests."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy.orm import Session

from api.deps import RuntimeDep, origin_of
from api.schemas import DecisionOut, request_out
from core import audit, auth, identity, platform_actions, request_service
from core.events import change_for
from core.models import User
from core.repositories import payments as payments_repo
from core.repositories import requests as requests_repo
from core.repositories import users as users_repo
from core.repositories.scope import PlayerScope
from core.request_service import NewRequest, RequestError
from core.runtime import Runtime
from core.security import new_token
from policies.engine import ChainDef
from policies.snapshot import Principal

TEMPLATES = Path(__file__).resolve().parent / "templates"
SESSION_COOKIE = "bo_session"
LOGIN_CSRF_COOKIE = "bo_login_csrf"
PAGE_SIZE = 25

router = APIRouter(include_in_schema=False)
env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]))


def _until(value: datetime | None, now: datetime | None = None) -> str:
    """'due in 3h 20m' / 'SLA breached 5m ago' in words, not colour."""
    if value is None:
        return ""
    seconds = int((value - (now or datetime.now(UTC))).total_seconds())
    span = abs(seconds)
    days, rest = divmod(span, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    text = f"{days}d {hours}h" if days else f"{hours}h {minutes}m" if hours else f"{minutes}m"
    return f"due in {text}" if seconds >= 0 else f"overdue by {text}"


def _money(value: Decimal | str | None) -> str:
    if value is None:
        return ""
    return f"{Decimal(str(value)):,.2f}"


env.filters["until"] = _until
env.filters["money"] = _money
env.filters["dt"] = lambda v: v.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if v else ""
env.globals["now"] = lambda: datetime.now(UTC)


def render(
    request: Request,
    name: str,
    context: dict[str, Any],
    status_code: int = 200,
    block: str | None = None,
) -> HTMLResponse:
    """Render a page, or only one of its blocks (the htmx fragment)."""
    template = env.get_template(name)
    context = {"request": request, **context}
    if block is None:
        return HTMLResponse(template.render(context), status_code=status_code)
    ctx = template.new_context(context)
    return HTMLResponse("".join(template.blocks[block](ctx)), status_code=status_code)


def is_htmx(request: Request) -> bool:
    return request.headers.get("HX-Request") == "true"


# --- who is signed in ---------------------------------------------------------------


class LoginRequired(Exception):
    pass


class CsrfRefused(Exception):
    pass


@dataclass(frozen=True)
class Viewer:
    user: User
    principal: Principal
    csrf_token: str
    cookie: str
    workspaces: list[tuple[str, str]]
    # auth.ACTIVE, or a session still owing its authenticator code or MFA enrolment.
    stage: str = auth.ACTIVE
    session_id: int = 0


def may(request: Request | None, viewer: Viewer | None, permission: str) -> bool:
    """For templates: does the signed-in person hold this permission (say, to show a link)?"""
    if request is None or viewer is None:
        return False
    runtime: Runtime = request.app.state.runtime
    return bool(runtime.policy.authorize(viewer.principal, permission))


env.globals["may"] = may


def _sessions(rt: RuntimeDep) -> Iterator[Session]:
    with rt.sessions() as session:
        yield session


WebSessionDep = Annotated[Session, Depends(_sessions)]


def viewer_in_stages(
    request: Request, rt: Runtime, session: Session, stages: tuple[str, ...]
) -> Viewer:
    """The signed-in person, if their session is live (not idle, not past its absolute end)
    and in one of `stages`; otherwise the sign-in page."""
    cookie = request.cookies.get(SESSION_COOKIE)
    origin = origin_of(request, "web")
    found = auth.resolve_web_session(session, rt.settings, cookie, origin) if cookie else None
    session.commit()  # the last-use time, or the revocation of an idle session
    if found is None or cookie is None or found[1].stage not in stages:
        raise LoginRequired()
    user, web_session = found
    principal = users_repo.principal_for(session, user, rt.policy, web_session.mfa_verified_at)
    if web_session.stage == auth.ACTIVE and auth.second_factor_missing(rt.policy, principal):
        auth.hold_for_second_factor(session, rt.settings, user, web_session, origin)
        session.commit()
        if web_session.stage not in stages:
            raise LoginRequired()
    workspaces = rt.policy.workspaces_for(principal) if web_session.stage == auth.ACTIVE else []
    return Viewer(
        user,
        principal,
        web_session.csrf_token,
        cookie,
        workspaces,
        stage=web_session.stage,
        session_id=web_session.id,
    )


def current_viewer(request: Request, rt: RuntimeDep, session: WebSessionDep) -> Viewer:
    return viewer_in_stages(request, rt, session, (auth.ACTIVE,))


def any_stage_viewer(request: Request, rt: RuntimeDep, session: WebSessionDep) -> Viewer:
    """Also a session owing its code or enrolment: for the MFA pages and signing out."""
    stages = (auth.ACTIVE, auth.AWAITING_CODE, auth.MUST_ENROL)
    return viewer_in_stages(request, rt, session, stages)


ViewerDep = Annotated[Viewer, Depends(current_viewer)]
AnyStageViewerDep = Annotated[Viewer, Depends(any_stage_viewer)]


async def csrf_checked_form(request: Request, viewer: Viewer) -> dict[str, str]:
    """The posted form, after the CSRF token (header or field) matched the session's."""
    form = await request.form()
    fields = {key: str(value) for key, value in form.items()}
    sent = request.headers.get("X-CSRF-Token") or fields.get("csrf_token", "")
    if not hmac.compare_digest(sent.encode(), viewer.csrf_token.encode()):
        raise CsrfRefused()
    return fields


async def checked_form(request: Request, viewer: ViewerDep) -> dict[str, str]:
    return await csrf_checked_form(request, viewer)


FormDep = Annotated[dict[str, str], Depends(checked_form)]


def login_required_handler(request: Request, _: Exception) -> Response:
    target = "/login?" + urlencode({"next": request.url.path})
    if is_htmx(request):
        return Response(status_code=401, headers={"HX-Redirect": target})
    return RedirectResponse(target, status_code=303)


def csrf_refused_handler(request: Request, _: Exception) -> Response:
    message = "Your form expired or did not come from this site (CSRF check). Reload and retry."
    if is_htmx(request):
        return render(request, "_toast.html", {"message": message}, status_code=403)
    return HTMLResponse(f"<p role='alert'>{message}</p>", status_code=403)


def base_context(viewer: Viewer, active: str) -> dict[str, Any]:
    return {"viewer": viewer, "active": active}


def safe_next(value: str | None) -> str:
    if value and value.startswith("/") and not value.startswith("//"):
        return value
    return "/tasks"


def set_session_cookie(response: Response, rt: Runtime, opened: auth.NewWebSession) -> None:
    """The browser session's cookie: HttpOnly, SameSite=Lax, Secure behind TLS."""
    response.set_cookie(
        SESSION_COOKIE,
        opened.cookie_value,
        httponly=True,
        samesite="lax",
        secure=rt.settings.cookie_secure,
        expires=opened.expires_at,
        path="/",
    )


# --- login ------------------------------------------------------------------------


@router.get("/login")
def login_page(
    request: Request, rt: RuntimeDep, session: WebSessionDep, next: str | None = None
) -> Response:
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:  # a sign-in still owing its code or MFA set-up resumes there
        origin = origin_of(request, "web")
        found = auth.resolve_web_session(session, rt.settings, cookie, origin)
        session.commit()
        stage = found[1].stage if found else None
        if stage == auth.AWAITING_CODE:
            return RedirectResponse("/login/mfa?" + urlencode({"next": safe_next(next)}), 303)
        if stage == auth.MUST_ENROL:
            return RedirectResponse("/account/mfa", status_code=303)
    token = new_token()
    response = render(
        request,
        "login.html",
        {"csrf_token": token, "next": safe_next(next), "sso": rt.settings.oidc_enabled},
    )
    response.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict", path="/login")
    return response


@router.post("/login")
async def login_submit(request: Request, rt: RuntimeDep) -> Response:
    form = await request.form()
    username = str(form.get("username", "")).strip()
    password = str(form.get("password", ""))
    next_url = safe_next(str(form.get("next", "")))
    cookie_token = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    sent_token = str(form.get("csrf_token", ""))
    if not cookie_token or not hmac.compare_digest(cookie_token.encode(), sent_token.encode()):
        return render(
            request,
            "login.html",
            {
                "csrf_token": cookie_token or new_token(),
                "next": next_url,
                "username": username,
                "sso": rt.settings.oidc_enabled,
                "error": "The sign-in form expired. Please try again.",
            },
            status_code=403,
        )
    if not username or not password:
        return render(
            request,
            "login.html",
            {
                "csrf_token": cookie_token,
                "next": next_url,
                "username": username,
                "sso": rt.settings.oidc_enabled,
                "error": "Enter your username and password.",
            },
            status_code=422,
        )
    origin = origin_of(request, "web")
    directory = identity.ldap_directory(rt)

    def sign_in() -> tuple[auth.NewWebSession, str] | auth.AuthError:
        with rt.sessions() as session:
            try:
                signed_in = auth.sign_in(
                    session, rt.settings, rt.policy, username, password, None, origin, directory
                )
            except auth.AuthError as refused:
                session.commit()  # the audited failure, and a lockout it caused
                return refused
            opened = auth.open_web_session(
                session, rt.settings, signed_in.user, origin, signed_in.stage
            )
            session.commit()
            return opened, signed_in.stage

    outcome = await asyncio.to_thread(sign_in)
    if isinstance(outcome, auth.AuthError):
        # Lockouts, directory refusals (no mapped group) and outages say what they are.
        status_code = (
            429
            if isinstance(outcome, auth.LoginThrottled)
            else 403
            if isinstance(outcome, auth.AccessRefused)
            else 503
            if isinstance(outcome, identity.DirectoryUnavailable)
            else 401
        )
        message = str(outcome)[0].upper() + str(outcome)[1:] + "."
        return render(
            request,
            "login.html",
            {
                "csrf_token": cookie_token,
                "next": next_url,
                "username": username,
                "sso": rt.settings.oidc_enabled,
                "error": message if status_code != 401 else "Wrong username or password.",
            },
            status_code=status_code,
        )
    opened, stage = outcome
    # A session owing its code goes to the code form, one owing MFA set-up to enrolment.
    after_password = {
        auth.ACTIVE: next_url,
        auth.AWAITING_CODE: "/login/mfa?" + urlencode({"next": next_url}),
        auth.MUST_ENROL: "/account/mfa",
    }
    response = RedirectResponse(after_password[stage], status_code=303)
    set_session_cookie(response, rt, opened)
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return response


@router.post("/logout")
async def logout(request: Request, viewer: AnyStageViewerDep, rt: RuntimeDep) -> Response:
    await csrf_checked_form(request, viewer)
    return await asyncio.to_thread(_sign_out, request, viewer, rt)


def _sign_out(request: Request, viewer: Viewer, rt: Runtime) -> Response:
    with rt.sessions() as session:
        auth.close_web_session(
            session, viewer.cookie, viewer.user.username, origin_of(request, "web")
        )
        session.commit()
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# --- tasks ------------------------------------------------------------------------


@router.get("/")
def home() -> Response:
    return RedirectResponse("/tasks", status_code=303)


# --- requests ---------------------------------------------------------------------


@router.get("/requests")
def my_requests(request: Request, viewer: ViewerDep, session: WebSessionDep) -> Response:
    rows = requests_repo.request_page(session, requester_id=viewer.user.id, limit=100)
    return render(
        request,
        "requests.html",
        {**base_context(viewer, "requests"), "rows": rows},
    )


# --- new request form ---------------------------------------------------------------
# One form for every catalogue action: the fields come from the action's ParamDefs, the
# approval path preview from the policy engine, the refusals from request_service.submit.

_INPUT_STEP = {"money": "0.01", "percent": "0.01", "number": "0.01", "odds": "0.01", "integer": "1"}
# A word on params whose valid value depends on the target, shown in their label.
_PARAM_HINTS = {("payment.withdrawal", "amount"): "must equal the withdrawal"}
_DATETIME_LOCAL = "%Y-%m-%dT%H:%M"


@dataclass(frozen=True)
class ParamField:
    """One input of the form, as the template draws it."""

    name: str
    label: str
    kind: str  # the ParamDef type: money, percent, number, integer, odds, choice, datetime
    required: bool
    value: str
    low: str | None = None
    high: str | None = None
    step: str | None = None
    choices: tuple[str, ...] = ()

    @property
    def input_id(self) -> str:
        return f"param-{self.name}"

    @property
    def range_text(self) -> str:
        return f"{Decimal(self.low or 0):,} to {Decimal(self.high or 0):,}"


def _as_datetime_local(value: str) -> str:
    """An ISO date and time as a datetime-local value in UTC; anything else unchanged."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime(_DATETIME_LOCAL)


def _param_fields(action: str, chain: ChainDef, values: dict[str, str]) -> list[ParamField]:
    fields = []
    for name, spec in chain.params.items():
        label = spec.label or name.replace("_", " ").capitalize()
        if hint := _PARAM_HINTS.get((action, name)):
            label = f"{label} ({hint})"
        value = values.get(name, "")
        low = high = None
        if spec.type in _INPUT_STEP:
            low, high = (str(bound) for bound in spec.bounds())
        if spec.type == "datetime" and value:
            value = _as_datetime_local(value)
        fields.append(
            ParamField(
                name=name,
                label=label,
                kind=spec.type,
                required=spec.required,
                value=value,
                low=low,
                high=high,
                step=_INPUT_STEP.get(spec.type),
                choices=tuple(spec.choices or ()),
            )
        )
    return fields


def _target_label(action: str, chain: ChainDef) -> str:
    if action == "payment.withdrawal":
        return "Withdrawal"
    return f"{chain.target.replace('_', ' ').capitalize()} ID"


def _requestable(rt: Runtime, viewer: Viewer) -> list[tuple[str, str]]:
    """(action, title) of every catalogue action this person may request."""
    chains = rt.policy.chains.chains
    return [
        (name, chain.title)
        for name, chain in chains.items()
        if rt.policy.may_request_generically(viewer.principal, name)
    ]


def _chosen_action(
    rt: Runtime, viewer: Viewer, asked: str, requestable: list[tuple[str, str]]
) -> tuple[str | None, str | None, int]:
    """(action to show, why the asked one cannot be, HTTP status) for the asked action."""
    if not asked:
        return (requestable[0][0] if requestable else None), None, 200
    verdict = rt.policy.may_request_generically(viewer.principal, asked)
    if verdict:
        return asked, None, 200
    if verdict.code == "unknown_action":
        return None, f"'{asked}' is not an action of the catalogue; choose one below.", 422
    return None, f"You may not request '{asked}': {verdict.reason}. Choose another action.", 403


def _form_values(rt: Runtime, source: Mapping[str, str]) -> dict[str, str]:
    """The form's own fields from a query string or posted form; other keys are dropped.

    `fields_for` names the action whose fields were on screen: switching to an action
    about another kind of target must not carry the old target id over, nor its params.
    """
    action = source.get("action", "").strip()
    values = {key: source.get(key, "").strip() for key in ("action", "target", "reason")}
    chain = rt.policy.chain_definition(action)
    shown_for = source.get("fields_for", "").strip()
    shown = rt.policy.chain_definition(shown_for) if shown_for else None
    if shown_for and shown_for != action:
        if shown is None or chain is None or shown.target != chain.target:
            values["target"] = ""
        return values
    for name in chain.params if chain is not None else ():
        values[name] = source.get(name, "").strip()
    return values


def _sla_words(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _tier_rules(chain: ChainDef) -> list[str]:
    """Each tier in words: 'standard: while amount is below 10,000', 'large: otherwise'."""
    rules = []
    for tier in chain.tiers:
        if tier.when is None:
            rules.append(f"{tier.name}: otherwise")
            continue
        param = chain.params.get(tier.when.param)
        what = (param.label if param and param.label else tier.when.param).replace("_", " ")
        rules.append(f"{tier.name}: while {what.lower()} is below {tier.when.below:,}")
    return rules


def _approval_path(
    rt: Runtime, session: Session, action: str, values: dict[str, str]
) -> dict[str, Any]:
    """Which chain applies to the values as they are: valid params pick the tier, else the
    first tier applies (as the engine does for a missing value)."""
    chain = rt.policy.chains.chains[action]
    params = {name: values[name] for name in chain.params if values.get(name)}
    target = values.get("target", "")
    check_target = request_service.TARGET_CHECKS.get(action)
    if check_target is not None and target:
        with contextlib.suppress(RequestError):  # the submission names what is wrong
            check_target(session, target, params)
    clean, _ = rt.policy.validate_params(action, params, datetime.now(UTC))
    derived: dict[str, str] = {}
    field_action = platform_actions.FIELD_ACTIONS.get(action)
    if field_action and field_action.derive and target and not _missing(chain, clean):
        row = session.get(field_action.model, target)
        if row is not None:
            derived = field_action.derive(row, clean)
    depends_on_target = any(
        tier.when is not None and tier.when.param in chain.derived for tier in chain.tiers
    )
    reverts_at = None
    if chain.reverts_with and clean.get(chain.reverts_with):
        reverts_at = datetime.fromisoformat(clean[chain.reverts_with])
    snapshot = rt.policy.chain_for(action, {**clean, **derived})
    return {
        "tier": snapshot.tier,
        "steps": [
            {
                "name": step.name,
                "roles": step.roles,
                "approvals": step.approvals,
                "sla": _sla_words(step.sla_seconds),
                "escalate_to": step.escalate_to,
                "outside_requester_team": step.outside_requester_team,
            }
            for step in snapshot.steps
        ],
        "tier_rules": _tier_rules(chain) if len(chain.tiers) > 1 else [],
        "estimated": depends_on_target and not derived,
        "noun": chain.target.replace("_", " "),
        "expires_after": chain.expires_after,
        "reverts_label": chain.params[chain.reverts_with].label if chain.reverts_with else None,
        "reverts_at": reverts_at,
    }


def _missing(chain: ChainDef, clean: dict[str, str]) -> bool:
    return any(spec.required and name not in clean for name, spec in chain.params.items())


def _new_request_context(
    viewer: Viewer, rt: Runtime, session: Session, values: dict[str, str], errors: dict[str, str]
) -> dict[str, Any]:
    requestable = _requestable(rt, viewer)
    action, action_problem, status = _chosen_action(
        rt, viewer, values.get("action", ""), requestable
    )
    errors = dict(errors)
    if action_problem:
        errors["action"] = action_problem
    chain = rt.policy.chain_definition(action) if action else None
    fields = _param_fields(action, chain, values) if action and chain else []
    labels = {"action": "Action", "reason": "Reason"}
    anchors = {"action": "action", "target": "target", "reason": "reason"}
    if action and chain:
        labels["target"] = _target_label(action, chain)
    for f in fields:
        labels[f.name], anchors[f.name] = f.label, f.input_id
    return {
        **base_context(viewer, "new"),
        "actions": requestable,
        "action": action,
        "chain": chain,
        "fields": fields,
        "values": values,
        "errors": errors,
        # Refusals in a list at the top, each linking to its field.
        "error_list": [
            (anchors.get(key, "request-form"), labels.get(key, key), message)
            for key, message in errors.items()
        ],
        "status_code": status,
        "target_label": labels.get("target", ""),
        "payments": (
            payments_repo.page(
                session,
                status="pending",
                kind="withdrawal",
                scope=PlayerScope.of(request_service.data_scope(rt, viewer.principal)),
                within_limit=True,
                limit=200,
                newest_first=True,  # the payouts that just came in, first
            )
            if action == "payment.withdrawal"
            else []
        ),
        "path": _approval_path(rt, session, action, values) if action else None,
    }


def _no_requestable_action(request: Request, viewer: Viewer) -> Response:
    return render(
        request,
        "error.html",
        {**base_context(viewer, "new"), "message": "Your roles cannot start any request."},
        status_code=403,
    )


def _form_page(
    request: Request, viewer: Viewer, rt: Runtime, session: Session, block: str | None
) -> Response:
    """The form (or one of its regions) for the values in the query string."""
    values = _form_values(rt, request.query_params)
    context = _new_request_context(viewer, rt, session, values, {})
    if not context["actions"]:
        return _no_requestable_action(request, viewer)
    return render(
        request, "new_request.html", context, status_code=context["status_code"], block=block
    )


@router.get("/requests/new")
def new_request_form(
    request: Request, viewer: ViewerDep, rt: RuntimeDep, session: WebSessionDep
) -> Response:
    """Prefilled from the query string: ?action=<a>&target=<id>&<param>=<value>&reason=..."""
    return _form_page(request, viewer, rt, session, block=None)


@router.get("/requests/new/fields")
def new_request_fields(
    request: Request, viewer: ViewerDep, rt: RuntimeDep, session: WebSessionDep
) -> Response:
    """The fields of another action (htmx swap when the action changes)."""
    return _form_page(
        request, viewer, rt, session, block="action_fields" if is_htmx(request) else None
    )


@router.get("/requests/new/path")
def new_request_path(
    request: Request, viewer: ViewerDep, rt: RuntimeDep, session: WebSessionDep
) -> Response:
    """The approval path preview for the values as they are now."""
    return _form_page(request, viewer, rt, session, block="approval_path")


def _refusal_fields(err: RequestError) -> dict[str, str]:
    """Per-field messages; a refusal naming no field concerns the action (403) or the
    target as it is now (a closed account, a request already open for it)."""
    if err.fields:
        return dict(err.fields)
    if err.status == 403:
        return {"action": err.detail}
    if err.status in (409, 422):
        return {"target": err.detail}
    return {}


@router.post("/requests/new")
async def new_request_submit(
    request: Request, viewer: ViewerDep, form: FormDep, rt: RuntimeDep
) -> Response:
    values = _form_values(rt, form)
    chain = rt.policy.chain_definition(values["action"])
    params = {name: values[name] for name in (chain.params if chain else ()) if values[name]}
    try:
        created = await request_service.submit(
            rt,
            viewer.principal,
            NewRequest(values["action"], values["target"], params, values["reason"]),
            origin_of(request, "web"),
        )
    except RequestError as err:
        refusal = err

        def rerender() -> HTMLResponse:
            with rt.sessions() as session:
                context = _new_request_context(
                    viewer, rt, session, values, _refusal_fields(refusal)
                )
            context["form_error"] = refusal.detail
            block = "request_form" if is_htmx(request) else None
            return render(
                request, "new_request.html", context, status_code=refusal.status, block=block
            )

        return await asyncio.to_thread(rerender)
    location = f"/requests/{created.id}"
    if is_htmx(request):
        return Response(status_code=201, headers={"HX-Redirect": location})
    return RedirectResponse(location, status_code=303)


def _request_context(
    session: Session, rt: Runtime, viewer: Viewer, request_id: uuid.UUID
) -> dict[str, Any]:
    request = request_service.visible_request(session, rt, viewer.principal, request_id)
    detail = request_out(session, request)
    verdict, approver = request_service.decision_eligibility(session, rt, viewer.principal, request)
    timeline = audit.stream_events(session, f"request:{request_id}")
    mine = detail.requester == viewer.user.username
    step_up = (
        auth.step_up_needed(
            rt.settings, viewer.principal, viewer.user, request.action, request.amount
        )
        if verdict
        else None
    )
    return {
        **base_context(viewer, "requests" if mine else "tasks"),
        "r": detail,
        "can_decide": bool(verdict),
        "deciding_for": approver.delegation if verdict and approver else None,
        "decisions_by_step": _decisions_by_step(detail.decisions),
        "can_cancel": detail.status == "pending" and detail.requester == viewer.user.username,
        "timeline": timeline,
        "step_up": step_up,
        "step_up_minutes": rt.settings.step_up_minutes,
    }


def _decisions_by_step(decisions: list[DecisionOut]) -> dict[int, list[DecisionOut]]:
    by_step: dict[int, list[DecisionOut]] = {}
    for decided in decisions:
        by_step.setdefault(decided.step, []).append(decided)
    return by_step


def render_decided_row(
    request: Request,
    session: Session,
    rt: Runtime,
    viewer: Viewer,
    request_id: uuid.UUID,
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    """The decided row of My tasks; shows nothing of a request this person may not see."""
    try:
        visible = request_service.visible_request(session, rt, viewer.principal, request_id)
        detail = request_out(session, visible)
    except RequestError as err:
        detail = None
        if error is None:  # the row itself is the refusal
            error, status_code = err.detail, err.status
    context = {
        "r": detail,
        "error": error,
        "request_id": request_id,
        "viewer_name": viewer.user.username,
    }
    return render(request, "_task_done.html", context, status_code=status_code)


def _request_body(
    request: Request,
    session: Session,
    rt: Runtime,
    viewer: Viewer,
    request_id: uuid.UUID,
    error: str | None,
    status_code: int,
) -> Response:
    """After a decision or cancellation: the request page body, with the refusal if any."""
    try:
        context = _request_context(session, rt, viewer, request_id)
    except RequestError as err:
        return render(request, "_toast.html", {"message": err.detail}, err.status)
    context["decision_error"] = error
    if not is_htmx(request):
        return RedirectResponse(f"/requests/{request_id}", status_code=303)
    return render(request, "request.html", context, status_code=status_code, block="request_body")


@router.get("/requests/{request_id}/task-row")
def task_row(
    request: Request,
    request_id: uuid.UUID,
    viewer: ViewerDep,
    rt: RuntimeDep,
    session: WebSessionDep,
) -> Response:
    """A row of My tasks following its request live (someone else decided, it executed)."""
    return render_decided_row(request, session, rt, viewer, request_id)


@router.get("/requests/{request_id}")
def request_page(
    request: Request,
    request_id: uuid.UUID,
    viewer: ViewerDep,
    rt: RuntimeDep,
    session: WebSessionDep,
) -> Response:
    try:
        context = _request_context(session, rt, viewer, request_id)
    except RequestError as err:
        return render(
            request,
            "error.html",
            {**base_context(viewer, ""), "message": err.detail},
            status_code=err.status,
        )
    block = "request_body" if is_htmx(request) else None
    return render(request, "request.html", context, block=block)


async def _run_then_show(
    request: Request,
    rt: Runtime,
    viewer: Viewer,
    request_id: uuid.UUID,
    command: Awaitable[object],
    show: Callable[..., Response],
) -> Response:
    """Run a decision-like command, then render the region with its refusal if any."""
    error, status_code = None, 200
    try:
        await command
    except RequestError as err:
        error, status_code = err.detail, err.status

    def rerender() -> Response:
        with rt.sessions() as session:
            return show(request, session, rt, viewer, request_id, error, status_code)

    return await asyncio.to_thread(rerender)


@router.post("/requests/{request_id}/decision")
async def decide(
    request: Request, request_id: uuid.UUID, viewer: ViewerDep, form: FormDep, rt: RuntimeDep
) -> Response:
    """From the request page (swaps the page body) or a task row (swaps the row)."""
    command = request_service.decide(
        rt,
        viewer.principal,
        request_id,
        form.get("decision", ""),
        form.get("comment", ""),
        origin_of(request, "web"),
        totp=form.get("totp") or None,
    )
    show = render_decided_row if form.get("from") == "task" else _request_body
    return await _run_then_show(request, rt, viewer, request_id, command, show)


@router.post("/requests/{request_id}/cancel")
async def cancel(
    request: Request, request_id: uuid.UUID, viewer: ViewerDep, form: FormDep, rt: RuntimeDep
) -> Response:
    command = request_service.cancel(
        rt, viewer.principal, request_id, form.get("reason", ""), origin_of(request, "web")
    )
    return await _run_then_show(request, rt, viewer, request_id, command, _request_body)


# --- live updates -----------------------------------------------------------------

SSE_KEEPALIVE_SECONDS = 15.0


@router.get("/events")
async def events(request: Request, viewer: ViewerDep, rt: RuntimeDep) -> Response:
    """Server-sent events: which request in the viewer's data scope changed. Pages decide
    what to re-fetch (through the same scope checks)."""
    hub = getattr(request.app.state, "events", None)
    if hub is None:
        return Response(status_code=204)
    scope = rt.policy.scope_of(viewer.principal)
    queue = hub.subscribe()

    async def stream() -> AsyncIterator[str]:
        try:
            yield "retry: 5000\n\n"
            while not await request.is_disconnected():
                try:
                    payload = await asyncio.wait_for(queue.get(), SSE_KEEPALIVE_SECONDS)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                change = change_for(scope, payload)
                if change is not None:
                    yield f"event: request\ndata: {change}\n\n"
        finally:
            hub.unsubscribe(queue)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )

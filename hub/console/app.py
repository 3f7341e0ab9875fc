"""The console's web app, mounted at /console on the hub's HTTPS server beside the REST API.

Pages are rendered on the server (Jinja2) and readable without JavaScript; htmx refreshes
the live part of a rollout page. Every page needs a session; every POST needs the session's
CSRF token, a same-site origin, and a role that grants the action (checked here, whatever
buttons the page showed).
"""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlencode

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.routing import Mount

from hub.console import accounts, fleet_view, history, releases_view, sessions, telemetry_view
from hub.console.guard import AttemptLimit, SecurityHeaders, cross_site
from hub.db import session
from hub.rollouts import actions, audit, status, store
from hub.rollouts.api import RolloutDesk
from hub.rollouts.auth import Permission
from hub.rollouts.machine import IllegalTransition, State, allowed
from hub.rollouts.models import AuditEntry
from hub.rollouts.spec import RolloutSpec, field_errors

if TYPE_CHECKING:  # loaded only where a hub passes them
    from hub.fleet.authority import FleetAuthority
    from hub.registry.repository import ReleaseRepository

PREFIX = "/console"
HERE = Path(__file__).parent
ACTIONS: dict[str, Permission] = {
    "approve": Permission.APPROVE,
    "pause": Permission.OPERATE,
    "resume": Permission.OPERATE,
    "abort": Permission.OPERATE,
    "rollback": Permission.OPERATE,
}
# The audit page's and its CSV's filter, read from the same five query parameters.
AuditQuery = Annotated[history.AuditFilter, Depends()]


class _Redirect(Exception):
    def __init__(self, to: str) -> None:
        self.to = to


class _Problem(Exception):
    """An action not done, said on the page it was asked from (409)."""


class _Refused(Exception):
    def __init__(self, status_code: int, message: str) -> None:
        self.status_code = status_code
        self.message = message


@dataclass
class ConsoleDesk:
    desk: RolloutDesk
    login_limit: AttemptLimit
    k_anonymity: int = 5


def _local_time(value: datetime | None) -> Any:
    """A <time> element: UTC on the server, the operator's zone once console.js runs."""
    from markupsafe import Markup

    if value is None:
        return Markup("never")
    utc = value.astimezone(UTC)
    # Markup.format escapes its arguments.
    return Markup('<time datetime="{}">{} UTC</time>').format(
        utc.isoformat(), utc.strftime("%Y-%m-%d %H:%M")
    )


def create_console(
    desk: RolloutDesk,
    k_anonymity: int = 5,
    *,
    repository: ReleaseRepository | None = None,
    authority: FleetAuthority | None = None,
) -> FastAPI:
    """`repository`: the release pages (without it they say there is none); `authority`:
    certificates on the device page and revoking a device."""
    engine = desk.engine
    console = ConsoleDesk(desk, AttemptLimit(), k_anonymity)
    telemetry_cache = telemetry_view.HealthCache()
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.filters["when"] = _local_time
    templates.env.filters["fromiso"] = datetime.fromisoformat
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(SecurityHeaders)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.exception_handler(_Redirect)
    async def redirect(_request: Request, exc: _Redirect) -> Response:
        return RedirectResponse(exc.to, status_code=303)

    @app.exception_handler(_Refused)
    async def refused(request: Request, exc: _Refused) -> Response:
        return templates.TemplateResponse(
            request, "refused.html", {"message": exc.message, "who": None}, exc.status_code
        )

    def page(request: Request, name: str, who: sessions.Session, **context: Any) -> Response:
        return templates.TemplateResponse(
            request,
            name,
            {
                "who": who,
                "may_operate": who.principal.may(Permission.OPERATE),
                "may_approve": who.principal.may(Permission.APPROVE),
                "prefix": PREFIX,
                **context,
            },
        )

    def viewer(request: Request) -> sessions.Session:
        who = sessions.find(engine, request.cookies.get(sessions.COOKIE))
        if who is None:
            raise _Redirect(f"{PREFIX}/login")
        if who.must_change_password and not request.url.path.endswith("/password"):
            raise _Redirect(f"{PREFIX}/password")
        return who

    async def poster(
        request: Request, permission: Permission | None
    ) -> tuple[sessions.Session, dict[str, str]]:
        """The session of a state-changing request, after every check; and its form."""
        if cross_site(dict(request.headers), request.headers.get("host", "")):
            raise _Refused(403, "refused: this form was sent from another site")
        form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
        who = sessions.find(engine, request.cookies.get(sessions.COOKIE))
        if who is None:
            raise _Refused(401, "your session has ended: log in again")
        if not who.csrf_ok(form.get("csrf_token")):
            raise _Refused(
                403, "refused: the form's CSRF token is missing or wrong; reload the page"
            )
        if permission is not None and not who.principal.may(permission):
            raise _Refused(403, f"{who.principal.name} ({who.principal.role}) may not {permission}")
        return who, form

    def confirmed_reason(form: dict[str, str], what: str) -> str:
        """The reason of a confirmed destructive action; _Problem says what is missing."""
        if form.get("confirm") != "yes":
            raise _Problem(f"{what} not done: tick the box to confirm it")
        reason = form.get("reason", "").strip()
        if not reason:
            raise _Problem(f"{what} not done: say why (the reason goes into the audit log)")
        return reason

    def audited(actor: str, action: str, obj: str, reason: str, **details: Any) -> None:
        with session(engine) as db:
            audit.record(db, actor, action, obj, reason=reason, details=details)

    # --- login -----------------------------------------------------------------------

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request) -> Response:
        return templates.TemplateResponse(request, "login.html", {"who": None, "problem": None})

    @app.post("/login")
    async def login(request: Request) -> Response:
        if cross_site(dict(request.headers), request.headers.get("host", "")):
            raise _Refused(403, "refused: this form was sent from another site")
        client = request.client.host if request.client else "unknown"
        if not console.login_limit.allow(client):
            problem = "too many login attempts from this address: wait a minute"
            return templates.TemplateResponse(
                request, "login.html", {"who": None, "problem": problem}, 429
            )
        form = await request.form()
        name, password = str(form.get("name", "")), str(form.get("password", ""))
        result = await run_in_threadpool(accounts.check_login, engine, name, password)
        if result.user is None:
            return templates.TemplateResponse(
                request, "login.html", {"who": None, "problem": result.problem}, 401
            )
        token = await run_in_threadpool(sessions.start, engine, result.user.name)
        response = RedirectResponse(f"{PREFIX}/", status_code=303)
        response.set_cookie(value=token, **sessions.cookie_settings())  # type: ignore[arg-type]
        return response

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        await poster(request, None)
        sessions.end(engine, request.cookies.get(sessions.COOKIE))
        response = RedirectResponse(f"{PREFIX}/login", status_code=303)
        response.delete_cookie(
            sessions.COOKIE, path="/", secure=True, httponly=True, samesite="strict"
        )
        return response

    @app.get("/password", response_class=HTMLResponse)
    def password_form(request: Request) -> Response:
        return page(request, "password.html", viewer(request), problem=None)

    @app.post("/password")
    async def change_password(request: Request) -> Response:
        who, form = await poster(request, None)
        new, again = form.get("new_password", ""), form.get("again", "")
        current = await run_in_threadpool(
            accounts.check_login, engine, who.principal.name, form.get("current_password", "")
        )
        problem = None
        if current.user is None:
            problem = "the current password is wrong"
        elif new != again:
            problem = "the two new passwords differ"
        else:
            try:
                await run_in_threadpool(accounts.set_password, engine, who.principal.name, new)
            except accounts.AccountError as exc:
                problem = str(exc)
        if problem is not None:
            return templates.TemplateResponse(
                request, "password.html", {"who": who, "problem": problem, "prefix": PREFIX}, 400
            )
        return RedirectResponse(f"{PREFIX}/login", status_code=303)  # sessions ended: log in again

    # --- fleet -----------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse)
    def fleet(
        request: Request, q: str = "", group: str = "", tag: str = "", page_number: int = 1
    ) -> Response:
        who = viewer(request)
        chosen = fleet_view.FleetFilter(q, group, tag, max(1, page_number))
        data = fleet_view.overview(engine, datetime.now(UTC), chosen)
        return page(request, "fleet.html", who, chosen=chosen, **data)

    @app.get("/devices/{device_id}", response_class=HTMLResponse)
    def device(request: Request, device_id: str) -> Response:
        who = viewer(request)
        return page(request, "device.html", who, **_device_context(device_id), problem=None)

    def _device_context(device_id: str) -> dict[str, Any]:
        data = fleet_view.device_page(engine, device_id, datetime.now(UTC))
        if data is None:
            raise _Refused(404, f"no device {device_id}")
        certificates = authority.ca.certificates_of(device_id) if authority else None
        return {**data, "certificates": certificates, "now": datetime.now(UTC)}

    @app.post("/devices/{device_id}/revoke")
    async def revoke_device(request: Request, device_id: str) -> Response:
        who, form = await poster(request, Permission.OPERATE)
        from hub.fleet import registry
        from hub.fleet.revocation import revoke_device as revoke

        try:
            if authority is None:
                raise _Problem(
                    "this console has no device CA: revoke with `edge-hub device revoke`"
                )
            reason = confirmed_reason(form, "revoke")
            try:
                done = await run_in_threadpool(revoke, authority, engine, device_id)
            except registry.RegistryError as exc:
                raise _Refused(404, str(exc)) from None
            audited(
                who.principal.name, "revoke_device", f"device/{device_id}", reason,
                certificates=done.certificates, enrollment_tokens=done.enrollment_tokens,
            )  # fmt: skip
        except _Problem as exc:
            context = _device_context(device_id)
            response = page(request, "device.html", who, **context, problem=str(exc))
            response.status_code = 409
            return response
        return RedirectResponse(f"{PREFIX}/devices/{device_id}", status_code=303)

    # --- models and releases ---------------------------------------------------------

    @app.get("/releases", response_class=HTMLResponse)
    def releases_page(request: Request) -> Response:
        who = viewer(request)
        shown = releases_view.releases(repository, engine) if repository else None
        return page(request, "releases.html", who, models=shown)

    def _release_context(model: str, version: str) -> dict[str, Any]:
        from hub.registry.errors import ReleaseNotFound

        if repository is None:
            raise _Refused(404, "this hub serves no release repository")
        try:
            detail = releases_view.release_detail(repository, model, version)
        except ReleaseNotFound as exc:
            raise _Refused(404, str(exc)) from None
        return {"release": detail, "model": model, "version": version}

    @app.get("/releases/{model}/{version}", response_class=HTMLResponse)
    def release_page(request: Request, model: str, version: str) -> Response:
        who = viewer(request)
        return page(request, "release.html", who, **_release_context(model, version), problem=None)

    @app.post("/releases/{model}/{version}/revoke")
    async def revoke_release(request: Request, model: str, version: str) -> Response:
        who, form = await poster(request, Permission.OPERATE)
        context = _release_context(model, version)  # 404 before anything changes
        assert repository is not None
        try:
            reason = confirmed_reason(form, "revoke")
        except _Problem as exc:
            response = page(request, "release.html", who, **context, problem=str(exc))
            response.status_code = 409
            return response
        await run_in_threadpool(repository.revoke, model, version)
        audited(who.principal.name, "revoke_release", f"release/{model}/{version}", reason)
        return RedirectResponse(f"{PREFIX}/releases", status_code=303)

    # --- telemetry -------------------------------------------------------------------

    @app.get("/telemetry", response_class=HTMLResponse)
    def telemetry_page(request: Request, model: str = "", days: int = 7) -> Response:
        who = viewer(request)
        # The published models (no scan of the telemetry table); without a repository,
        # those telemetry names.
        models = (
            sorted(releases_view.model_names(repository))
            if repository
            else telemetry_cache.models(engine)
        )
        chosen = telemetry_view.TelemetryFilter(
            model or (models[0] if models else ""),
            days if days in telemetry_view.DAYS else 7,
        )
        data = telemetry_view.health(
            engine, chosen, datetime.now(UTC), console.k_anonymity, telemetry_cache
        )
        return page(
            request, "telemetry.html", who, models=models, chosen=chosen,
            choices=telemetry_view.DAYS, charts=data, k=console.k_anonymity,
        )  # fmt: skip

    # --- rollouts --------------------------------------------------------------------

    @app.get("/rollouts", response_class=HTMLResponse)
    def rollouts(request: Request) -> Response:
        who = viewer(request)
        return page(request, "rollouts.html", who, rollouts=store.list_rollouts(engine))

    def _rollout_context(rollout_id: int) -> dict[str, Any]:
        try:
            shown = status.describe(engine, rollout_id)
        except store.NoRollout as exc:
            raise _Refused(404, str(exc)) from None
        moves = {str(e) for e in allowed(State(shown["state"]))}
        return {
            "r": shown,
            "actions": [a for a in ACTIONS if a in moves],
            "final": shown["state"] in ("completed", "aborted", "rolled_back"),
            "charts": history.rollout_charts(engine, shown, console.k_anonymity),
        }

    @app.get("/rollouts/new", response_class=HTMLResponse)
    def new_rollout(request: Request) -> Response:
        who = viewer(request)
        return page(request, "rollout_new.html", who, form={}, errors={})

    @app.post("/rollouts/new")
    async def create_rollout(request: Request) -> Response:
        who, form = await poster(request, Permission.OPERATE)
        errors: dict[str, str] = {}
        try:
            spec = RolloutSpec.model_validate(_spec_from_form(form))
        except ValidationError as exc:
            errors = {e["field"]: e["message"] for e in field_errors(exc)}
        except ValueError as exc:
            errors = {"form": str(exc)}
        if not errors:
            try:
                created = await run_in_threadpool(
                    store.create, engine, spec, who.principal.name, desk.releases
                )
            except store.RolloutRefused as exc:
                errors = {exc.field: str(exc)}
            else:
                return RedirectResponse(f"{PREFIX}/rollouts/{created.id}", status_code=303)
        response = page(request, "rollout_new.html", who, form=form, errors=errors)
        response.status_code = 400
        return response

    @app.get("/rollouts/{rollout_id}", response_class=HTMLResponse)
    def rollout(request: Request, rollout_id: int) -> Response:
        who = viewer(request)
        return page(request, "rollout.html", who, **_rollout_context(rollout_id), problem=None)

    @app.get("/rollouts/{rollout_id}/live", response_class=HTMLResponse)
    def rollout_live(request: Request, rollout_id: int) -> Response:
        who = viewer(request)
        return page(request, "_rollout_live.html", who, **_rollout_context(rollout_id))

    @app.post("/rollouts/{rollout_id}/{action}")
    async def act(request: Request, rollout_id: int, action: str) -> Response:
        if action not in ACTIONS:
            raise _Refused(404, f"no action {action}")
        who, form = await poster(request, ACTIONS[action])
        reason = form.get("reason") or None
        name = who.principal.name
        calls: dict[str, Callable[[], Any]] = {
            "approve": lambda: actions.approve(engine, rollout_id, name, reason),
            "pause": lambda: actions.pause(engine, rollout_id, name, reason),
            "resume": lambda: actions.resume(engine, rollout_id, name, reason),
            "abort": lambda: actions.abort(engine, rollout_id, name, reason),
            "rollback": lambda: actions.rollback(
                engine, rollout_id, name, reason, desk.key, desk.releases
            ),
        }
        if form.get("confirm") != "yes":
            problem = f"{action} not done: tick the box to confirm it"
        else:
            try:
                await run_in_threadpool(calls[action])
            except store.NoRollout as exc:
                raise _Refused(404, str(exc)) from None
            except (actions.ActionRefused, IllegalTransition) as exc:
                problem = str(exc)
            else:
                return RedirectResponse(f"{PREFIX}/rollouts/{rollout_id}", status_code=303)
        response = page(
            request, "rollout.html", who, **_rollout_context(rollout_id), problem=problem
        )
        response.status_code = 409
        return response

    # --- audit -----------------------------------------------------------------------

    @app.get("/audit", response_class=HTMLResponse)
    def audit_page(
        request: Request, chosen: AuditQuery, before: int | None = None, after: int | None = None
    ) -> Response:
        who = viewer(request)
        try:
            shown = history.audit_page(engine, chosen, before=before, after=after)
            problem = None
        except ValueError as exc:
            shown, problem = history.AuditPage([], None, None), str(exc)
        return page(
            request, "audit.html", who, shown=shown, chosen=chosen, problem=problem,
            filters=urlencode(dataclasses.asdict(chosen)),
        )  # fmt: skip

    @app.get("/audit.csv")
    def audit_csv(request: Request, chosen: AuditQuery) -> Response:
        viewer(request)
        try:
            entries = history.audit_export(engine, chosen)
        except ValueError as exc:
            raise _Refused(400, str(exc)) from None
        return StreamingResponse(
            _csv_lines(entries),
            media_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="edge-hub-audit.csv"'},
        )

    return app


def _csv_lines(entries: Iterator[AuditEntry]) -> Iterator[str]:
    """The export, a line at a time (a sync iterator: Starlette runs it in a thread)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["at", "actor", "action", "object", "reason", "details"])
    for e in entries:
        writer.writerow([e.at.isoformat(), e.actor, e.action, e.object, e.reason, e.details])
        if out.tell() > 64 * 1024:
            yield out.getvalue()
            out.seek(0)
            out.truncate()
    yield out.getvalue()


def _spec_from_form(form: dict[str, str]) -> dict[str, Any]:
    """The create form's fields as a RolloutSpec's JSON (the spec then checks every value)."""

    def numbers(text: str, kind: type) -> list[Any] | None:
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts:
            return None
        try:
            return [kind(p) for p in parts]
        except ValueError:
            raise ValueError(f"waves: {text!r} is not a comma-separated list of numbers") from None

    target: dict[str, Any] = {}
    if form.get("group"):
        target["group"] = form["group"].strip()
    if form.get("devices"):
        target["devices"] = [d.strip() for d in form["devices"].split(",") if d.strip()]
    waves = form.get("waves", "")
    spec: dict[str, Any] = {
        "model": form.get("model", "").strip(),
        "version": form.get("version", "").strip(),
        "target": target,
        "approval_required": form.get("approval_required") == "yes",
        "on_failure": form.get("on_failure", "pause"),
    }
    if form.get("wave_kind") == "counts":
        spec["wave_counts"] = numbers(waves, int)
    else:
        spec["wave_percent"] = numbers(waves, float)
    if form.get("soak_seconds", "").strip():
        spec["soak_seconds"] = form["soak_seconds"].strip()
    if form.get("max_error_rate_increase", "").strip():
        spec["health"] = {"max_error_rate_increase": form["max_error_rate_increase"].strip()}
    return spec


def console_mount(
    desk: RolloutDesk,
    k_anonymity: int = 5,
    *,
    repository: ReleaseRepository | None = None,
    authority: FleetAuthority | None = None,
) -> Mount:
    """The console for the hub's HTTPS server: /console/..."""
    app = create_console(desk, k_anonymity, repository=repository, authority=authority)
    return Mount(PREFIX, app=app)

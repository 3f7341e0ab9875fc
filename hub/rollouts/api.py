"""The rollout REST API, mounted at /api on the hub's HTTPS server (OpenAPI schema at
/api/v1/openapi.json, docs at /api/v1/docs). Every route needs a bearer token whose role
grants the route's permission; bad input is a 400 that names the field, and stores nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool
from starlette.routing import Mount

from hub.rollouts import actions, audit, status, store
from hub.rollouts.auth import Authenticator, OperatorTokenError, Permission, Principal, authenticate
from hub.rollouts.machine import IllegalTransition
from hub.rollouts.releases import ReleaseCheck
from hub.rollouts.spec import RolloutSpec


@dataclass(frozen=True)
class RolloutDesk:
    engine: Engine
    releases: ReleaseCheck
    key: Callable[[], Ed25519PrivateKey]
    authenticators: Sequence[Authenticator]


class ActionBody(BaseModel):
    reason: str | None = Field(None, max_length=2000)
    override: bool = False


def _error(status_code: int, code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message, **extra}}, status_code=status_code
    )


class _Refusal(Exception):
    def __init__(self, response: JSONResponse) -> None:
        self.response = response


def create_api(desk: RolloutDesk) -> FastAPI:
    api = FastAPI(
        title="edge-hub rollouts",
        openapi_url="/v1/openapi.json",
        docs_url="/v1/docs",
        redoc_url=None,
    )

    def principal(permission: Permission) -> Callable[..., Principal]:
        def dependency(authorization: Annotated[str, Header()] = "") -> Principal:
            try:
                who = authenticate(desk.authenticators, authorization)
            except OperatorTokenError as exc:
                raise _Refusal(_error(503, "tokens_unavailable", str(exc))) from None
            if who is None:
                raise _Refusal(
                    _error(
                        401, "unauthorized",
                        "send 'Authorization: Bearer <operator token>'; issue one with "
                        "`edge-hub rollout token NAME --role operator`",
                    )
                )  # fmt: skip
            if not who.may(permission):
                raise _Refusal(
                    _error(403, "forbidden", f"{who.name} ({who.role}) may not {permission}")
                )
            return who

        return dependency

    reader = Depends(principal(Permission.READ))
    operator = Depends(principal(Permission.OPERATE))
    approver = Depends(principal(Permission.APPROVE))

    @api.exception_handler(_Refusal)
    async def refused(_request: Request, exc: _Refusal) -> JSONResponse:
        return exc.response

    @api.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        fields = []
        for error in exc.errors():
            loc = [str(p) for p in error["loc"] if p != "body"]
            message = str(error["msg"]).removeprefix("Value error, ")
            head = message.split(":", 1)[0]
            if head in RolloutSpec.model_fields:
                loc.append(head)
            fields.append({"field": ".".join(loc) or "body", "message": message})
        text = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
        return _error(400, "invalid_request", text, fields=fields)

    def _not_found(exc: Exception) -> JSONResponse:
        return _error(404, "not_found", str(exc))

    @api.get("/v1/rollouts")
    def list_rollouts(who: Principal = reader) -> list[dict[str, Any]]:
        return [status.summary(r) for r in store.list_rollouts(desk.engine)]

    @api.post("/v1/rollouts", status_code=201)
    def create(spec: RolloutSpec, who: Principal = operator) -> Any:
        try:
            rollout = store.create(desk.engine, spec, who.name, desk.releases)
        except store.RolloutRefused as exc:
            return _error(400, "invalid_rollout", f"{exc.field}: {exc}", field=exc.field)
        return status.summary(rollout)

    @api.get("/v1/rollouts/{rollout_id}")
    def show(rollout_id: int, who: Principal = reader) -> Any:
        try:
            return status.describe(desk.engine, rollout_id)
        except store.NoRollout as exc:
            return _not_found(exc)

    @api.get("/v1/rollouts/{rollout_id}/audit")
    def audit_log(rollout_id: int, who: Principal = reader) -> Any:
        return [
            {
                "at": e.at.isoformat(), "actor": e.actor, "action": e.action,
                "object": e.object, "reason": e.reason, "details": e.details,
            }
            for e in audit.entries(desk.engine, store.object_name(rollout_id))
        ]  # fmt: skip

    async def _act(call: Callable[[], Any]) -> Any:
        try:
            state = await run_in_threadpool(call)
        except store.NoRollout as exc:
            return _not_found(exc)
        except (actions.ActionRefused, IllegalTransition) as exc:
            return _error(409, "refused", str(exc))
        return {"state": str(state)}

    @api.post("/v1/rollouts/{rollout_id}/approve")
    async def approve(rollout_id: int, body: ActionBody, who: Principal = approver) -> Any:
        return await _act(lambda: actions.approve(desk.engine, rollout_id, who.name, body.reason))

    @api.post("/v1/rollouts/{rollout_id}/pause")
    async def pause(rollout_id: int, body: ActionBody, who: Principal = operator) -> Any:
        return await _act(lambda: actions.pause(desk.engine, rollout_id, who.name, body.reason))

    @api.post("/v1/rollouts/{rollout_id}/resume")
    async def resume(rollout_id: int, body: ActionBody, who: Principal = operator) -> Any:
        return await _act(
            lambda: actions.resume(
                desk.engine, rollout_id, who.name, body.reason, override=body.override
            )
        )

    @api.post("/v1/rollouts/{rollout_id}/abort")
    async def abort(rollout_id: int, body: ActionBody, who: Principal = operator) -> Any:
        return await _act(lambda: actions.abort(desk.engine, rollout_id, who.name, body.reason))

    @api.post("/v1/rollouts/{rollout_id}/rollback")
    async def rollback(rollout_id: int, body: ActionBody, who: Principal = operator) -> Any:
        return await _act(
            lambda: actions.rollback(
                desk.engine, rollout_id, who.name, body.reason, desk.key, desk.releases
            )
        )

    return api


def api_mount(desk: RolloutDesk) -> Mount:
    """The API for the hub's HTTPS server: /api/v1/..."""
    return Mount("/api", app=create_api(desk))

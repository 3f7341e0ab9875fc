"""The FastAPI application: routes, authentication, limits, metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response

from edge_agent import __version__
from edge_agent.api.arrivals import ArrivalCounter, Arrivals
from edge_agent.api.auth import ApiKeyGuard
from edge_agent.api.counting import ResponseCounter
from edge_agent.api.errors import ApiError, install_handlers
from edge_agent.api.generation import ChatShape, Generation, TextShape
from edge_agent.api.hosts import HostGuard, HostPolicy
from edge_agent.api.limits import BodySizeLimit
from edge_agent.api.metrics import Metrics
from edge_agent.api.schemas import ChatCompletionRequest, CompletionRequest
from edge_agent.api.tools import plan_tools
from edge_agent.api.usage import UsageRecorder
from edge_agent.config import ApiConfig
from edge_agent.runtime import InvalidRequest
from edge_agent.runtime.service import ModelService
from edge_agent.store.store import RELEASE_FILE


def create_app(
    api: ApiConfig,
    services: Sequence[ModelService],
    *,
    load: bool = True,
    usage: UsageRecorder | None = None,
) -> FastAPI:
    """Build the app. With `load`, models load in the background once the server starts.
    `usage` hands request timings and counts to anonymous telemetry (none: off)."""
    usage = usage or UsageRecorder()
    by_name = {service.name: service for service in services}
    arrivals = Arrivals()
    for service in services:
        service.arrivals = arrivals
    metrics = Metrics()
    metrics.watch(
        lambda: sum(s.scheduler.queue_depth for s in by_name.values() if s.scheduler),
        lambda: sum(s.scheduler.active_sequences for s in by_name.values() if s.scheduler),
    )
    metrics.watch_prompt_cache(
        lambda: sum(s.scheduler.prompt_cache.nbytes for s in by_name.values() if s.scheduler)
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if load:
            for service in services:
                service.load_in_background()
        yield
        for service in by_name.values():
            service.stop()

    app = FastAPI(title="edge-agent", version=__version__, lifespan=lifespan)
    # Added innermost first. A request passes, in order: the Host/Origin check (before any
    # work), CORS (only for configured origins), the API key (before the body is read),
    # the arrival count (requests that may reach the scheduler), the body's size and time.
    app.add_middleware(
        BodySizeLimit,
        max_bytes=api.max_request_bytes,
        timeout_seconds=api.request_body_timeout_seconds,
    )
    app.add_middleware(ArrivalCounter, arrivals=arrivals)
    app.add_middleware(ApiKeyGuard, keys=api.api_keys)
    if api.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(api.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "content-type"],
            max_age=600,
        )
    app.add_middleware(HostGuard, policy=HostPolicy.of(api), port=api.port)
    app.add_middleware(ResponseCounter, metrics=metrics)  # outermost: refusals count too
    install_handlers(app, usage.refused)
    app.state.metrics = metrics
    app.state.services = by_name

    def service_for(name: str) -> ModelService:
        if name not in by_name:
            available = ", ".join(by_name) or "none"
            raise ApiError(
                404,
                f"the model '{name}' does not exist here (available: {available})",
                param="model",
                code="model_not_found",
            )
        return by_name[name]

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}  # open to all when keys are set: says nothing more

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        models = [_model_status(service) for service in by_name.values()]
        ready = bool(by_name) and all(service.ready for service in by_name.values())
        status = "ready" if ready else "not_ready"
        body = {"status": status, "version": __version__, "models": models}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    v1 = APIRouter(prefix="/v1")

    @v1.get("/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(s) for s in by_name.values()]}

    @v1.get("/models/{name}")
    async def get_model(name: str) -> dict[str, Any]:
        return _model_card(service_for(name))

    @v1.post("/chat/completions", response_model=None)
    async def chat(body: ChatCompletionRequest, request: Request) -> Response:
        service = service_for(body.model)
        tools = plan_tools(body.tools, body.tool_choice, body.parallel_tool_calls)
        params = body.chat_sampling(tools.grammar() if tools else None)
        model, _ = service.require()
        messages = [m.to_runtime() for m in body.messages]
        prompt = tools.prompt(model, messages) if tools else model.chat_prompt(messages)
        prompt_ids = model.encode(prompt)
        n = body.choices(service.limits.max_batch_size)
        gen = Generation(
            service, "chat", prompt_ids, params, metrics, ChatShape, request, arrivals, usage
        )
        gen.tool_plan, gen.n = tools, n
        if body.stream:
            return gen.stream(body.include_usage)
        return await gen.respond()

    @v1.post("/completions", response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> Response:
        service = service_for(body.model)
        params = body.sampling()
        model, _ = service.require()
        prompt = body.prompt_input()
        if isinstance(prompt, str):
            prompt_ids = model.encode(prompt)
        else:
            vocab = model.folder.vocab_size
            bad = next((t for t in prompt if not 0 <= t < vocab), None)
            if bad is not None:
                raise InvalidRequest(
                    "prompt", f"token id {bad} is outside the vocabulary 0..{vocab - 1}"
                )
            prompt_ids = prompt
        if not prompt_ids:
            raise InvalidRequest("prompt", "the prompt is empty")
        gen = Generation(
            service, "completions", prompt_ids, params, metrics, TextShape, request, arrivals, usage
        )
        gen.n = body.choices(service.limits.max_batch_size)
        if body.stream:
            return gen.stream(body.include_usage)
        return await gen.respond()

    app.include_router(v1)
    return app


def _model_card(service: ModelService) -> dict[str, Any]:
    created = _installed_at(service.loaded_from or service.path.resolve())
    return {"id": service.name, "object": "model", "created": created, "owned_by": "edge-agent"}


def _installed_at(folder: Path) -> int:
    """When the version was installed: its release file is written just before the
    folder appears; a folder the store did not install counts from its own change time."""
    for path in (folder / RELEASE_FILE, folder):
        try:
            return int(path.stat().st_mtime)
        except OSError:
            continue
    return 0


def _model_status(service: ModelService) -> dict[str, Any]:
    status: dict[str, Any] = {"id": service.name, "ready": service.ready}
    if service.loaded_from is not None:
        status["path"] = str(service.loaded_from)
    if service.model is not None:
        status.update(
            load_seconds=round(service.model.load_seconds, 3),
            provider=service.model.provider,
            threads=service.model.threads,
            context_length=service.model.context_length,
        )
    if service.error is not None:
        status["error"] = str(service.error)
    return status

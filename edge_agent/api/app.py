"""The FastAPI application: routes, authentication, limits, metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from edge_agent import __version__
from edge_agent.api.arrivals import ArrivalCounter, Arrivals
from edge_agent.api.auth import ApiKeyGuard
from edge_agent.api.counting import ResponseCounter
from edge_agent.api.embeddings import embeddings_router
from edge_agent.api.errors import ApiError, install_handlers
from edge_agent.api.generation import ChatShape, Generation, TextShape
from edge_agent.api.hosts import HostGuard, HostPolicy
from edge_agent.api.limits import BodySizeLimit
from edge_agent.api.metrics import Metrics
from edge_agent.api.model_metrics import ModelPoolCollector
from edge_agent.api.schemas import ChatCompletionRequest, CompletionRequest
from edge_agent.api.tools import plan_tools
from edge_agent.api.usage import UsageRecorder
from edge_agent.config import ApiConfig
from edge_agent.runtime import InvalidRequest, ModelLoadError, SamplingParams
from edge_agent.runtime.encoder import Encoders
from edge_agent.runtime.errors import AdapterBaseUnavailable, AdapterDoesNotFit, ModelTooLarge
from edge_agent.runtime.pool import ModelNotInstalled, ModelPool, parse_keep_alive
from edge_agent.runtime.service import ModelService
from edge_agent.store.store import RELEASE_FILE


def create_app(
    api: ApiConfig,
    services: Sequence[ModelService],
    *,
    load: bool = True,
    usage: UsageRecorder | None = None,
    pool: ModelPool | None = None,
    encoders: Encoders | None = None,
) -> FastAPI:
    """Build the app. With `load`, models load in the background once the server starts.
    `usage` hands request timings and counts to anonymous telemetry (none: off).
    `services` are pinned (always served); a `pool` also serves every installed model on
    demand (without one, only `services`); `encoders` serve /v1/embeddings."""
    usage = usage or UsageRecorder()
    if pool is None:
        pool = ModelPool(discover=dict, make_service=_no_other_models)
    encoders = encoders or Encoders(discover=dict)
    encoders.budget = pool  # encoders and generation models share one memory budget
    arrivals = Arrivals()

    def make_arrivals(service: ModelService) -> ModelService:
        service.arrivals = arrivals  # a live switch retires a version once these are in
        return service

    for service in services:
        pool.pin(make_arrivals(service))
    loader = pool.make_service
    pool.make_service = lambda name, path: make_arrivals(loader(name, path))
    by_name = pool.services  # loaded models; live switches replace entries in place
    metrics = Metrics()
    metrics.registry.register(ModelPoolCollector(pool))
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
        pool.start()
        yield
        pool.stop()

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
    app.state.pool = pool

    def not_found(name: str, available: Sequence[str]) -> ApiError:
        return ApiError(
            404,
            f"the model '{name}' does not exist here (available: {', '.join(available) or 'none'})",
            param="model",
            code="model_not_found",
        )

    async def acquire(name: str, keep_alive: float | str | None) -> ModelService:
        """The model, loaded on demand (the request waits); release it once submitted."""
        try:
            seconds = parse_keep_alive(keep_alive)
        except ValueError as exc:
            raise InvalidRequest("keep_alive", str(exc)) from None
        try:
            loaded = pool.acquire_loaded(name, seconds)
            if loaded is not None:
                return loaded
            return await run_in_threadpool(pool.acquire, name, seconds)
        except ModelNotInstalled as exc:
            raise not_found(name, exc.available) from None
        except AdapterBaseUnavailable as exc:
            raise ApiError(400, str(exc), param="model", code="adapter_base_unavailable") from None
        except AdapterDoesNotFit as exc:  # the installed adapter is at fault, not the request
            raise ApiError(
                503, str(exc), type_="server_error", param="model", code="adapter_does_not_fit"
            ) from None
        except ModelTooLarge as exc:
            raise ApiError(400, str(exc), param="model", code="model_too_large") from None
        except ModelLoadError as exc:  # the installed model is at fault, not the request
            raise ApiError(
                503, str(exc), type_="server_error", param="model", code="model_load_failed"
            ) from None

    def on_adapter(params: SamplingParams, name: str) -> SamplingParams:
        """A request for an adapter runs on its base with the adapter active."""
        return replace(params, adapter=name) if pool.adapter(name) is not None else params

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}  # open to all when keys are set: says nothing more

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        models = [_model_status(service) for service in by_name.values()]
        # Ready once the pinned models are; the others load when asked for.
        some = bool(by_name) or bool(pool.known())
        ready = some and all(service.ready for service in by_name.values())
        status = "ready" if ready else "not_ready"
        body = {"status": status, "version": __version__, "models": models}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    v1 = APIRouter(prefix="/v1")

    @v1.get("/models")
    async def list_models() -> dict[str, Any]:
        known = {**encoders.known(), **pool.known()}
        return {"object": "list", "data": [_model_card(n, p) for n, p in known.items()]}

    @v1.get("/models/{name}")
    async def get_model(name: str) -> dict[str, Any]:
        known = {**encoders.known(), **pool.known()}
        if name not in known:
            raise not_found(name, list(known))
        return _model_card(name, known[name])

    @v1.get("/ps")
    async def loaded_models() -> dict[str, Any]:
        """What is loaded now: memory, idle time, keep-alive (`edge-agent ps` reads it)."""
        return {
            "object": "list",
            "data": pool.ps(),
            "memory_budget_bytes": pool.budget_bytes,
            "memory_used_bytes": pool.used_bytes(),
        }

    @v1.post("/chat/completions", response_model=None)
    async def chat(body: ChatCompletionRequest, request: Request) -> Response:
        service = await acquire(body.model, body.keep_alive)
        try:  # leased until its work is queued: the pool does not unload it meanwhile
            return await chat_on(service, body, request)
        finally:
            pool.release(service)

    async def chat_on(
        service: ModelService, body: ChatCompletionRequest, request: Request
    ) -> Response:
        tools = plan_tools(body.tools, body.tool_choice, body.parallel_tool_calls)
        params = on_adapter(body.chat_sampling(tools.grammar() if tools else None), body.model)
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
        service = await acquire(body.model, body.keep_alive)
        try:
            return await completions_on(service, body, request)
        finally:
            pool.release(service)

    async def completions_on(
        service: ModelService, body: CompletionRequest, request: Request
    ) -> Response:
        params = on_adapter(body.sampling(), body.model)
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
    app.include_router(embeddings_router(encoders))
    return app


def _no_other_models(name: str, _path: Path) -> ModelService:
    raise ModelNotInstalled(name, [])


def _model_card(name: str, path: Path) -> dict[str, Any]:
    created = _installed_at(path.resolve())
    return {"id": name, "object": "model", "created": created, "owned_by": "edge-agent"}


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

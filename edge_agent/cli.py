"""`edge-agent`: serve, run, chat, models, status."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from edge_agent import __version__
from edge_agent.config import AgentConfig, ApiConfig, load_config
from edge_agent.installed.commands import register as register_installed_commands
from edge_agent.models import (
    ADAPTER,
    EMBEDDINGS,
    GENERATION,
    ModelNotFound,
    ModelRef,
    installed_adapters,
    installed_models,
    resolve_model,
)
from edge_agent.program import ListenError, Program, listen, serve_http, url_of

if TYPE_CHECKING:  # the runtime loads onnxruntime-genai: imported lazily so --version is fast
    from edge_agent.runtime.encoder import Encoders
    from edge_agent.runtime.pool import ModelPool
    from edge_agent.runtime.service import ModelService
    from edge_agent.runtime.swap import ActiveWatcher
    from edge_agent.sync.service import SyncService
    from edge_agent.telemetry.collector import Collector
    from edge_agent.telemetry.factory import Telemetry
    from edge_agent.updates.chunks import ChunkSource
    from edge_agent.updates.manager import Outcome, UpdateManager
    from edge_agent.updates.peer_server import PeerService
    from edge_agent.updates.source import ReleaseSource

program = Program(
    "edge-agent", "Offline inference for ONNX-quantized small language models.", load_config
)
app = program.app

# At shutdown, how long a version retired by a live switch may take to finish its requests.
WATCHER_STOP_SECONDS = 30.0
fail = program.fail

ModelArg = Annotated[str, typer.Argument(help="installed model name or model folder path")]


def _config() -> AgentConfig:
    return program.config


def _model(name_or_path: str | None) -> ModelRef:
    config = _config()
    wanted = name_or_path or config.models.default
    if not wanted:
        fail("no model given: pass --model NAME_OR_PATH or set [models] default in the config", 2)
    try:
        return resolve_model(wanted, config.models_dir)
    except ModelNotFound as exc:
        fail(str(exc), 2)


def _model_folder(name_or_path: str | None) -> ModelRef:
    """The model, its folder checked before any loading: one message, exit status 2."""
    from edge_agent.runtime import inspect_model_folder
    from edge_agent.runtime.errors import ModelFolderError

    ref = _model(name_or_path)
    try:
        inspect_model_folder(ref.path)
    except ModelFolderError as exc:
        fail(str(exc), 2)
    return ref


def _service(ref: ModelRef, telemetry: Telemetry | None = None) -> ModelService:
    from edge_agent.runtime import RuntimeSettings, SchedulerLimits
    from edge_agent.runtime.service import ModelService

    rt = _config().runtime
    loaded, failed = _load_hooks(telemetry.collector) if telemetry is not None else (None, None)
    return ModelService(
        ref.name,
        ref.path,
        RuntimeSettings(
            intra_op_threads=rt.intra_op_threads, execution_provider=rt.execution_provider
        ),
        SchedulerLimits(
            max_active_sequences=rt.max_active_sequences,
            max_queued_requests=rt.max_queued_requests,
            max_batch_size=rt.max_batch_size,
            default_max_tokens=rt.default_max_tokens,
            retry_after_seconds=_config().api.retry_after_seconds,
            prompt_cache_bytes=rt.prompt_cache_mib * 2**20,
        ),
        on_loaded=loaded,
        on_load_failed=failed,
    )


def _load_hooks(
    collector: Collector,
) -> tuple[Callable[[ModelService], None], Callable[[ModelService], None]]:
    """Telemetry of model loads: time and peak memory, or a load error, per release."""
    from edge_agent.protocol.telemetry import ErrorClass
    from edge_agent.runtime.memory import peak_resident_mib

    def loaded(service: ModelService) -> None:
        if service.release is not None and service.model is not None:
            collector.record_load(
                *service.release,
                seconds=service.model.load_seconds,
                peak_memory_mib=peak_resident_mib(),
            )

    def failed(service: ModelService) -> None:
        collector.record_error(ErrorClass.MODEL_LOAD, *(service.release or (None, None)))

    return loaded, failed


def _finish_interrupted_update() -> None:
    """An update cut short by a crash or power loss completes or rolls back first.

    Nothing here may stop inference: whatever goes wrong is said, and serving goes on
    with the active version."""
    config = _config()
    if not config.update_state_path.is_file():
        return  # never updated here: skip loading the update client at all
    from edge_agent.store import ModelStore, StoreError
    from edge_agent.updates.errors import StateDamaged, UpdateError
    from edge_agent.updates.manager import UpdateManager

    try:
        UpdateManager(ModelStore(config.data_dir), config.update_state_path).recover()
    except StateDamaged as exc:
        typer.echo(f"edge-agent: the update state was unreadable: {exc}", err=True)
    except (UpdateError, StoreError, OSError) as exc:
        typer.echo(f"edge-agent: the interrupted update did not complete: {exc}", err=True)


@app.command()
def serve(
    model: Annotated[
        list[str] | None,
        typer.Option(
            help="installed model name or folder path, loaded at start and never unloaded "
            "(repeatable); every other installed model loads when asked for"
        ),
    ] = None,
    host: Annotated[str | None, typer.Option(help="address to bind (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port (default 8080)")] = None,
    name: Annotated[
        str | None,
        typer.Option(help="model id clients use, with one --model (default: the model's name)"),
    ] = None,
    insecure_no_auth: Annotated[
        bool,
        typer.Option(
            "--insecure-no-auth",
            help="listen beyond loopback with no API key: anyone who reaches the port "
            "can use the model",
        ),
    ] = False,
) -> None:
    """Serve the installed models on the local OpenAI-compatible API."""
    from edge_agent.api import create_app
    from edge_agent.api.usage import UsageRecorder
    from edge_agent.runtime import inspect_model_folder
    from edge_agent.runtime.errors import ModelFolderError
    from edge_agent.runtime.memory import tune_allocator

    api = _api_settings(host, port, insecure_no_auth)  # before any work: it may refuse
    config = _config()
    installed = [ref for ref in installed_models(config.models_dir) if ref.kind == GENERATION]
    wanted = model or ([config.models.default] if config.models.default else [])
    if not wanted and not installed:
        fail(
            f"no model to serve: none is installed in {config.models_dir}; install one, "
            "or pass --model NAME_OR_PATH",
            2,
        )
    pinned = [_model(each) for each in wanted]
    if name:
        if len(pinned) != 1:
            fail("--name renames one model: give exactly one --model with it", 2)
        pinned = [ModelRef(name, pinned[0].path)]
    for ref in pinned:
        if ref.kind == ADAPTER:
            fail(
                f"{ref.name} is a LoRA adapter: it is served by name on its base whenever "
                "both are installed; give --model only for generation models",
                2,
            )
        if ref.kind == EMBEDDINGS:
            fail(
                f"{ref.name} is a sentence encoder: it serves /v1/embeddings whenever it is "
                "installed; give --model only for generation models",
                2,
            )
        try:
            inspect_model_folder(ref.path)  # refuse a broken folder before binding the port
        except ModelFolderError as exc:
            fail(str(exc), 2)
    try:  # before the slow work: a taken port is said at once
        from edge_agent.installed.handoff import inherited_listener

        sock = inherited_listener(api.host, api.port) or listen(api.host, api.port)
    except ListenError as exc:
        fail(str(exc))
    tune_allocator()  # before the server's threads start allocating
    _finish_interrupted_update()
    sync = _start_sync()
    peers = _start_peer_service(config)
    telemetry = _start_telemetry(sync)
    services = [_service(ref, telemetry) for ref in pinned]
    usage = UsageRecorder(telemetry.collector if telemetry else None)
    pool = _model_pool(telemetry)
    application = create_app(api, services, usage=usage, pool=pool, encoders=_encoders())
    watchers = _active_watchers(pool, [*pinned, *installed], telemetry)
    url = url_of(sock)

    first = pinned[0].name if pinned else installed[0].name
    hello = {"model": first, "messages": [{"role": "user", "content": "Hello"}]}
    names = ", ".join(f"'{ref.name}'" for ref in pinned) or "none pinned"
    others = len({ref.name for ref in installed} - {ref.name for ref in pinned})
    on_demand = f" (and {others} more installed, loaded on demand)" if others else ""

    def listening() -> None:  # printed once the server accepts requests, with the real port
        typer.echo(
            f"edge-agent {__version__}: serving model {names}{on_demand} at {url}/v1", err=True
        )
        typer.echo(
            f"  try: curl {url}/v1/chat/completions -H 'Content-Type: application/json' "
            f"-d '{json.dumps(hello)}'",
            err=True,
        )

    from edge_agent.installed.hooks import RESTART_EXIT, ServiceHooks

    hub_reached = (lambda: sync.link.connected) if sync is not None else None
    hooks = ServiceHooks(services, url, hub_reached)  # READY=1, watchdog, A/B switch
    try:
        hooks.start()  # on the launcher's socket: only once the pinned models are loaded
        from edge_agent.installed.handoff import linger_seconds

        serve_http(application, api.host, api.port, sock=sock, on_listening=listening,
                   linger_seconds=linger_seconds())  # fmt: skip
    finally:
        hooks.stop()
        for watcher in watchers:
            watcher.stop(WATCHER_STOP_SECONDS)  # a version retiring mid-switch finishes first
        if telemetry is not None:
            telemetry.stop()  # the open window goes into the outbox before it closes
        if sync is not None:
            sync.stop()
        if peers is not None:
            peers.stop()
    if hooks.switching:  # drained: the launcher starts the new slot
        raise typer.Exit(RESTART_EXIT)


def _model_pool(telemetry: Telemetry | None) -> ModelPool:
    """Every installed model, loaded on demand within [runtime]'s memory budget."""
    from edge_agent.runtime.pool import ModelPool

    config = _config()
    return ModelPool(
        discover=lambda: _installed_of_kind(GENERATION),
        make_service=lambda name, path: _service(ModelRef(name, path), telemetry),
        discover_adapters=lambda: installed_adapters(config.models_dir),
        budget_bytes=config.runtime.memory_budget_mib * 2**20,
        keep_alive_seconds=config.runtime.keep_alive_seconds,
        retry_after_seconds=config.api.retry_after_seconds,
    )


def _installed_of_kind(kind: str) -> dict[str, Path]:
    return {
        ref.name: ref.path for ref in installed_models(_config().models_dir) if ref.kind == kind
    }


def _encoders() -> Encoders:
    """The installed sentence encoders, for /v1/embeddings."""
    from edge_agent.runtime.encoder import Encoders

    return Encoders(lambda: _installed_of_kind(EMBEDDINGS), _config().runtime.intra_op_threads)


def _active_watchers(
    pool: ModelPool, refs: list[ModelRef], telemetry: Telemetry | None
) -> list[ActiveWatcher]:
    """One per installed model: a new version of one switches live, the others untouched
    (a model that is not loaded reads its pointer when it next loads)."""
    from edge_agent.runtime.swap import ActiveWatcher
    from edge_agent.updates.errors import StateDamaged
    from edge_agent.updates.machine import Phase, StateFile

    config = _config()
    updates = StateFile(config.update_state_path)

    def settled() -> bool:
        try:
            return updates.load().phase is Phase.IDLE
        except StateDamaged:  # keep the version that serves; the next update resets it
            return False

    watchers: dict[str, ActiveWatcher] = {}
    for ref in refs:
        if ref.name in watchers or not (ref.path.name == "active" and ref.path.is_symlink()):
            continue
        watchers[ref.name] = ActiveWatcher(
            pool.swap_view(),
            ref.name,
            functools.partial(_service, ref, telemetry),
            config.updates.watch_interval_seconds,
            settled=settled,
        )
        watchers[ref.name].start()
    return list(watchers.values())


def _start_peer_service(config: AgentConfig) -> PeerService | None:
    """The site's chunk server when `[peers] serve = true` (edge_agent.updates.peer_setup)."""
    if not config.peers.serve:
        return None
    from edge_agent.updates.peer_setup import start_peer_service
    from edge_agent.updates.peer_tls import PeerNotTrusted

    try:
        service = start_peer_service(config)
    except (PeerNotTrusted, OSError) as exc:
        fail(f"cannot serve chunks to peers: {exc}")
    if service is not None:
        typer.echo(f"  peers: serving this device's chunks at {service.url}", err=True)
    return service


def _peers_or_fail(config: AgentConfig) -> list[ChunkSource]:
    from edge_agent.updates.peer_setup import configured_peers
    from edge_agent.updates.peer_tls import PeerNotTrusted

    try:
        return configured_peers(config)
    except PeerNotTrusted as exc:
        fail(f"cannot fetch from the [peers] sources: {exc}")


def _api_settings(host: str | None, port: int | None, insecure_no_auth: bool) -> ApiConfig:
    """The API config with the command line's address; refuses an open API on a network."""
    from pydantic import ValidationError

    from edge_agent.api.hosts import is_loopback

    api = _config().api
    try:  # validated like the config file, so --port 80000 gets the same error
        api = ApiConfig.model_validate(
            {
                **api.model_dump(),
                "host": host or api.host,
                "port": api.port if port is None else port,
            }
        )
    except ValidationError as exc:
        problems = "; ".join(f"--{e['loc'][0]}: {e['msg']}" for e in exc.errors())
        fail(problems, 2)
    if is_loopback(api.host) or api.api_keys:
        return api
    if not insecure_no_auth:
        fail(
            f"refusing to listen on {api.host} without an API key: anyone who can reach that "
            "address could use the model. Set [api] api_keys in the config (or "
            "EDGE_AGENT__API__API_KEYS='[\"<key>\"]'), or listen on 127.0.0.1, or pass "
            "--insecure-no-auth to accept an open API",
            2,
        )
    typer.echo(
        f"WARNING: the API listens on {api.host} with no API key (--insecure-no-auth): "
        "anyone who can reach this address can use the model",
        err=True,
    )
    return api


def _start_sync() -> SyncService | None:
    """The fleet link, when the device is enrolled or `[sync]` is configured."""
    from edge_agent.sync.settings import sync_settings

    config = _config()
    try:
        settings = sync_settings(config)
        if settings is None:
            return None  # in no fleet: the sync stack is not even imported
        from edge_agent.sync.service import SyncService

        service = SyncService(config, settings, __version__)
        service.start()
    except (ValueError, RuntimeError) as exc:
        fail(f"fleet sync cannot start: {exc}")
    typer.echo(f"  fleet sync: device {settings.device_id}, broker {settings.broker}", err=True)
    return service


def _start_telemetry(sync: SyncService | None) -> Telemetry | None:
    """Anonymous telemetry per the config's policy; without a fleet link it is kept in the
    local log only (there is nowhere to send it)."""
    from edge_agent.telemetry import factory

    config = _config()
    settings = config.telemetry
    if settings.policy == "off":
        return None
    if sync is None and settings.policy == "aggregate":
        settings = settings.model_copy(update={"policy": "local-log"})
    issuer = None
    if sync is not None and sync.settings.update_source.startswith(("http://", "https://")):
        from edge_agent.telemetry.tokens import HubIssuer

        # The anonymous token comes from the hub that serves the releases.
        issuer = HubIssuer(
            sync.settings.update_source, sync.settings.update_token, sync.settings.update_ca
        )
    telemetry = factory.build(
        settings,
        data_dir=config.data_dir,
        outbox=sync.outbox if sync is not None else None,
        agent_version=__version__,
        execution_provider=config.runtime.execution_provider,
        issuer=issuer,
    )
    telemetry.start()
    if sync is not None:
        sync.collector = telemetry.collector
    shown = "aggregated, anonymous" if settings.policy == "aggregate" else "kept locally only"
    typer.echo(f"  telemetry: {shown} (`edge-agent telemetry show` prints every byte)", err=True)
    return telemetry


@app.command()
def enroll(
    hub_url: Annotated[
        str | None, typer.Argument(help="the hub, e.g. https://hub.example:8070")
    ] = None,
    device_id: Annotated[str, typer.Option("--device-id", help="this device's id")] = "",
    token: Annotated[
        str,
        typer.Option(help="the token from `edge-hub device enroll` (<secret>@sha256:<CA hash>)"),
    ] = "",
    offline: Annotated[
        Path | None,
        typer.Option(
            help="enroll by USB stick: the first run writes the request, the run after "
            "`edge-hub enroll-import` completes from the hub's answer"
        ),
    ] = None,
) -> None:
    """Join a fleet: check the hub against the token's CA fingerprint, make this device's
    key, get its certificate, trust the hub's releases. Writes nothing unless all checks
    pass; a TUF root pinned before is kept (only a root it signed may follow it)."""
    from edge_agent.sync.identity import EnrollmentFailed
    from edge_agent.sync.settings import identity_of

    config = _config()
    identity = identity_of(config)
    if not device_id or not token:
        fail("--device-id and --token are needed", 2)
    if offline is not None:
        from edge_agent.sync.enroll_offline import enroll_offline

        try:
            done = enroll_offline(
                identity, offline, device_id, token, config.data_dir, config.trust_dir
            )
        except (EnrollmentFailed, ValueError, OSError) as exc:
            fail(f"enrollment refused, nothing was changed on this device: {exc}")
        if done is None:
            typer.echo(f"request written to {offline}: take it to `edge-hub enroll-import`,")
            typer.echo("  then run this command again with the stick to complete")
        else:
            typer.echo(f"enrolled as {done.device_id} by stick; the hub CA matched the token")
        return
    if hub_url is None:
        fail("name the hub's https:// address, or pass --offline PATH", 2)
    try:
        enrolled = identity.enroll(hub_url, device_id, token, config.trust_dir)
    except (EnrollmentFailed, ValueError) as exc:
        fail(f"enrollment refused, nothing was changed on this device: {exc}")
    typer.echo(f"enrolled as {enrolled.device_id}: broker {enrolled.broker_url}")
    typer.echo(f"  key and certificate in {identity.folder}; releases from {enrolled.hub_url}")
    typer.echo(f"  the hub's CA is pinned in {identity.tls.ca_file}")
    typer.echo("  `edge-agent serve` now connects to the fleet")


@app.command()
def run(
    model: ModelArg,
    prompt: Annotated[str, typer.Argument(help="the prompt; '-' reads standard input")],
    max_tokens: Annotated[int, typer.Option(help="most tokens to generate")] = 256,
    temperature: Annotated[float, typer.Option(help="0 = greedy")] = 0.7,
    top_p: Annotated[float, typer.Option()] = 1.0,
    top_k: Annotated[int, typer.Option(help="0 = off")] = 0,
    seed: Annotated[int | None, typer.Option()] = None,
    stop: Annotated[list[str] | None, typer.Option(help="stop string (repeatable)")] = None,
    raw: Annotated[bool, typer.Option(help="send the prompt without the chat template")] = False,
) -> None:
    """Generate once from a prompt, streaming to standard output."""
    from edge_agent.chat import ChatSession, SessionError

    ref = _model_folder(model)
    text = sys.stdin.read() if prompt == "-" else prompt
    try:
        session = ChatSession.open(_service(ref))
        params = session.params(
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            seed=seed,
            stop=tuple(stop or ()),
        )
        session.reply(text, params, sys.stdout, raw=raw, remember=False)
    except SessionError as exc:
        fail(str(exc))
    sys.stdout.write("\n")


@app.command()
def chat(
    model: ModelArg,
    system: Annotated[str | None, typer.Option(help="system prompt")] = None,
    max_tokens: Annotated[int, typer.Option(help="most tokens per answer")] = 512,
    temperature: Annotated[float, typer.Option(help="0 = greedy")] = 0.7,
) -> None:
    """Chat with a model in the terminal: line editing and history, Ctrl-C stops an
    answer, /clear, /system, /bye (or Ctrl-D); /help lists the commands."""
    import logging

    from edge_agent.chat import ChatSession, SessionError
    from edge_agent.chat_repl import ChatRepl, display_name

    if logging.getLogger().level > logging.DEBUG:  # a clean screen unless --verbose
        logging.getLogger().setLevel(logging.WARNING)
    interactive = sys.stdin.isatty()
    if interactive:
        import readline  # noqa: F401  (input() gains line editing and history)
    ref = _model_folder(model)
    try:
        session = ChatSession.open(_service(ref), system=system)
        params = session.params(max_tokens=max_tokens, temperature=temperature)
    except SessionError as exc:
        fail(str(exc))
    history = _config().data_dir / "chat_history" if interactive else None
    ChatRepl(session, params, history_file=history).run(display_name(ref.path, ref.name))


@app.command()
def models() -> None:
    """List the installed models: active, previous and pending versions."""
    from edge_agent.store import ModelStore
    from edge_agent.updates.machine import Phase, StateFile, UpdateRecord

    config = _config()
    found = installed_models(config.models_dir)
    if not found:
        typer.echo(f"no models installed in {config.models_dir}")
        return
    from edge_agent.updates.errors import StateDamaged

    store = ModelStore(config.data_dir)
    try:
        record = StateFile(config.update_state_path).load()
    except StateDamaged as exc:
        typer.echo(f"update state unreadable ({exc}); `edge-agent update` resets it", err=True)
        record = UpdateRecord()
    for ref in found:
        size = sum(f.stat().st_size for f in ref.path.rglob("*") if f.is_file())
        active, previous = store.active(ref.name), store.previous(ref.name)
        parts = [ref.name, f"{size / 1e6:.1f} MB"]
        if active is not None:
            parts.append(f"active {active.version}")
        if previous is not None:
            parts.append(f"previous {previous.version}")
        if record.phase is not Phase.IDLE and record.model == ref.name:
            parts.append(f"pending {record.version} ({record.phase})")
        parts.append(str(ref.path))
        typer.echo("\t".join(parts))
        for version, usage in store.disk_usage(ref.name).items():
            # Versions share unchanged files: "adds" is what this one takes beyond older ones.
            typer.echo(f"  {version}\t{_bytes(usage.size)}\tadds {_bytes(usage.adds)} on disk")


@app.command()
def ps(
    url: Annotated[
        str | None, typer.Option(help="the agent's address (default: from [api])")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the agent's answer")] = False,
) -> None:
    """What the running agent has loaded: memory, idle time, when each model unloads."""
    from edge_agent.ps import AgentUnreachable, agent_url, format_table, loaded_models

    api = _config().api
    try:
        body = loaded_models(url or agent_url(api), api.api_keys[0] if api.api_keys else None)
    except AgentUnreachable as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps(body, indent=2))
        return
    for line in format_table(body):
        typer.echo(line)


@app.command()
def trust(
    root_json: Annotated[Path, typer.Argument(help="the fleet's TUF root.json")],
    replace: Annotated[bool, typer.Option(help="replace a root pinned before")] = False,
) -> None:
    """Pin the fleet's trusted root: every update is verified against it."""
    from edge_agent.updates.errors import UpdateError
    from edge_agent.updates.source import pin_root

    try:
        pin_root(_config().trust_dir, root_json, replace=replace)
    except UpdateError as exc:
        fail(str(exc), 2)
    typer.echo(f"trusted root pinned in {_config().trust_dir}")


@app.command()
def update(
    model_names: Annotated[
        list[str] | None, typer.Argument(metavar="[MODEL]...", help="models to update")
    ] = None,
    source: Annotated[
        str | None, typer.Option("--from", help="hub URL or repository folder (USB)")
    ] = None,
    version: Annotated[str | None, typer.Option(help="a specific version")] = None,
) -> None:
    """Fetch, verify and install the newest signed release; roll back if it is unhealthy."""
    from edge_agent.store import ModelStore
    from edge_agent.sync.settings import sync_settings
    from edge_agent.updates.errors import UpdateError
    from edge_agent.updates.fetchers import fetcher_for
    from edge_agent.updates.manager import UpdateManager
    from edge_agent.updates.source import ReleaseSource

    config = _config()
    try:
        fleet = sync_settings(config)  # an enrolled device updates from its hub
    except ValueError as exc:
        fail(str(exc))
    origin = source or (fleet.update_source if fleet else config.updates.source)
    token = fleet.update_token if fleet and origin == fleet.update_source else None
    hub_ca = fleet.update_ca if fleet and origin == fleet.update_source else None
    wanted = model_names or list(config.updates.models)
    if not origin:
        fail("no update source: pass --from URL|PATH or set [updates] source", 2)
    if not wanted:
        fail("no model named: pass MODEL or set [updates] models", 2)
    if version and len(wanted) > 1:
        fail("--version applies to one model at a time", 2)
    _finish_interrupted_update()
    manager = UpdateManager(ModelStore(config.data_dir), config.update_state_path)
    failed = False
    try:
        base, fetcher = fetcher_for(
            origin,
            token or config.updates.token or None,
            config.updates.bandwidth_bytes_per_second,
            ca_file=hub_ca,
        )
        peers = _peers_or_fail(config)  # [peers] sources: asked for chunks before `origin`
        with ReleaseSource(base, config.trust_dir, fetcher, peers=peers) as releases:
            for name in wanted:
                try:
                    outcome = _update_one(manager, releases, name, version)
                except UpdateError as exc:
                    typer.echo(f"edge-agent: {name}: {exc}", err=True)
                    failed = True
                    continue
                if outcome.changed:
                    typer.echo(
                        f"{name}: {outcome.version} installed and active "
                        f"(fetched {outcome.fetched_bytes} bytes, reused {outcome.reused_bytes})"
                    )
                else:
                    typer.echo(f"{name}: {outcome.version} is the newest release")
    except UpdateError as exc:
        fail(str(exc))
    if failed:
        raise typer.Exit(1)


def _update_one(
    manager: UpdateManager, releases: ReleaseSource, name: str, version: str | None
) -> Outcome:
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    from edge_agent import logs
    from edge_agent.updates.machine import Phase

    phases = {
        Phase.DOWNLOADING: "downloading",
        Phase.INSTALLING: "installing (verifying and assembling the files)",
        Phase.ACTIVATING: "activating",
        Phase.HEALTH_CHECK: "health check (loading the model, a short generation)",
        Phase.ROLLING_BACK: "rolling back",
    }
    columns = ("[progress.description]{task.description}", BarColumn(), DownloadColumn())
    # The logging handler writes to the same console: its lines appear above the bar.
    with Progress(*columns, TransferSpeedColumn(), transient=True, console=logs.console()) as bar:
        task = bar.add_task(f"{name}: downloading", total=None)

        def entered(phase: Phase) -> None:
            if phase in phases:
                bar.update(task, description=f"{name}: {phases[phase]}")

        try:
            return manager.update(
                releases,
                name,
                version,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
                on_phase=entered,
            )
        except KeyboardInterrupt:
            bar.stop()
            fail(
                f"{name}: update interrupted. What arrived is kept: run the same `edge-agent "
                "update` again to resume (only missing chunks are fetched); the active "
                "version keeps serving meanwhile",
                130,
            )


@app.command("import")
def import_stick(
    stick: Annotated[Path, typer.Argument(help="the USB stick's folder (its mount point)")],
) -> None:
    """Install the releases of a USB bundle: verified like an online update, copied to a
    private staging folder first; refused unless its authorisation names this device."""
    from edge_agent.store import ModelStore
    from edge_agent.sync.settings import identity_of
    from edge_agent.updates.errors import UpdateError
    from edge_agent.updates.manager import UpdateManager
    from edge_agent.updates.offline import import_bundle

    config = _config()
    try:
        enrolled = identity_of(config).enrollment()
    except ValueError as exc:
        fail(str(exc))
    device_id = config.sync.device_id or (enrolled.device_id if enrolled else "")
    if not device_id:
        fail("this device has no id: enroll it (edge-agent enroll) or set [sync] device_id", 2)
    _finish_interrupted_update()
    manager = UpdateManager(ModelStore(config.data_dir), config.update_state_path)
    try:
        report = import_bundle(
            stick,
            manager,
            trust_dir=config.trust_dir,
            data_dir=config.data_dir,
            device_id=device_id,
        )
    except UpdateError as exc:
        fail(f"the stick was refused: {exc}")
    for outcome in report.outcomes:
        state = "installed and active" if outcome.changed else "already active"
        typer.echo(f"{outcome.model}: {outcome.version} {state}")
    for note in report.notes:  # what this device's desired state on the stick held back
        typer.echo(note)
    if report.window_closed:
        opens = report.window_opens.isoformat() if report.window_opens else "not within five years"
        typer.echo(
            f"the maintenance window is closed: nothing was installed; import the stick "
            f"again once it opens ({opens})"
        )
    if enrolled is not None:  # what happened goes to the hub, by the link or the next stick
        from edge_agent.sync.outbox import Outbox
        from edge_agent.sync.settings import OUTBOX_FILE
        from edge_agent.sync.stick_export import apply_receipts, queue_import_report

        with Outbox(config.sync_dir / OUTBOX_FILE) as outbox:
            dropped = apply_receipts(outbox, config.sync_dir, report.receipt_ids)
            queue_import_report(
                outbox,
                device_id,
                __version__,
                manager.store,
                [(o.model, o.version, _before(manager, o)) for o in report.outcomes],
                report.failures,
            )
        if dropped:
            typer.echo(f"the hub has {dropped} messages of this device: dropped from the outbox")
    for error in report.errors:
        typer.echo(f"edge-agent: {error}", err=True)
    if report.errors:
        raise typer.Exit(1)


def _before(manager: UpdateManager, outcome: Outcome) -> str | None:
    """The version active before an install (the store's previous one once it changed)."""
    if not outcome.changed:
        return outcome.version
    previous = manager.store.previous(outcome.model)
    return previous.version if previous else None


@app.command("export")
def export_stick(
    stick: Annotated[Path, typer.Argument(help="the USB stick's folder (its mount point)")],
) -> None:
    """Write the outbox (state, install events, anonymous telemetry) onto a stick for the
    hub, signed by this device's key; messages stay until the hub's receipt comes back."""
    from edge_agent.sync.outbox import Outbox
    from edge_agent.sync.settings import OUTBOX_FILE, identity_of
    from edge_agent.sync.stick_export import export_outbox

    config = _config()
    identity = identity_of(config)
    try:
        enrolled = identity.enrollment()
    except ValueError as exc:
        fail(str(exc))
    if enrolled is None:
        fail("this device is not enrolled: `edge-agent enroll --offline PATH` first", 2)
    try:
        with Outbox(config.sync_dir / OUTBOX_FILE) as outbox:
            result = export_outbox(stick, outbox, identity, enrolled.device_id, config.sync_dir)
    except (OSError, ValueError) as exc:
        fail(f"nothing was exported: {exc}")
    typer.echo(
        f"{result.messages} messages and {result.telemetry} telemetry reports written to "
        f"{stick}; they stay in the outbox until the hub's receipt returns on a stick"
    )


@app.command()
def rollback(model: ModelArg) -> None:
    """Make the previous version of MODEL active again."""
    from edge_agent.store import ModelStore, StoreError
    from edge_agent.updates.errors import UpdateError
    from edge_agent.updates.manager import UpdateManager

    config = _config()

    try:
        version = UpdateManager(ModelStore(config.data_dir), config.update_state_path).rollback(
            model
        )
    except (StoreError, UpdateError) as exc:
        fail(str(exc))
    typer.echo(f"{model}: {version} is active again")


def _ago(when: datetime, now: datetime) -> str:
    seconds = max(0, int((now - when).total_seconds()))
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


@app.command()
def status() -> None:
    """Show the hub link (connected since, last sync, outbox), active models, pending update."""
    from edge_agent.store import ModelStore, StoreError
    from edge_agent.sync.settings import sync_settings
    from edge_agent.sync.state import STATUS_FILE, load_status, process_alive
    from edge_agent.updates.machine import Phase, StateFile

    config = _config()
    now = datetime.now(UTC)
    try:
        sync = sync_settings(config)
    except ValueError as exc:
        fail(str(exc))
    if sync is None:
        typer.echo("sync: not configured (enroll with `edge-agent enroll`)")
    else:
        typer.echo(f"sync: device {sync.device_id}, broker {sync.broker}")
        try:
            link = load_status(config.sync_dir / STATUS_FILE)
        except ValueError as exc:
            fail(str(exc))
        if link is None:
            typer.echo("  link: has not run yet")
        else:
            state = "connected" if link.connected else "disconnected"
            running = "" if process_alive(link.pid) else " (link not running; last known state)"
            typer.echo(f"  link: {state} since {link.since.isoformat()}{running}")
            last = link.last_sync_at
            typer.echo(
                "  last sync: " + (f"{last.isoformat()} ({_ago(last, now)})" if last else "never")
            )
            typer.echo(f"  outbox depth: {link.outbox_depth}")
            typer.echo(f"  dropped telemetry: {link.dropped_telemetry}")
            if link.denied_messages:
                typer.echo(f"  refused by the broker: {link.denied_messages}")
            typer.echo(f"  as of: {link.updated_at.isoformat()} ({_ago(link.updated_at, now)})")
    store = ModelStore(config.data_dir)
    names = store.models()
    if not names:
        typer.echo("models: none installed")
    for name in names:
        try:
            active = store.active(name)
        except StoreError as exc:
            typer.echo(f"model {name}: {exc}")
            continue
        typer.echo(f"model {name}: active {active.version if active else 'none'}")
    from edge_agent.updates.errors import StateDamaged

    try:
        record = StateFile(config.update_state_path).load()
    except StateDamaged as exc:
        fail(f"{exc}; `edge-agent serve` or `edge-agent update` moves it aside")
    if record.phase is Phase.IDLE:
        typer.echo("update: idle")
    else:
        typer.echo(f"update: {record.model} {record.version} {record.phase}")
    typer.echo(f"telemetry: {_telemetry_policy(linked=sync is not None)}")


telemetry_app = typer.Typer(
    help="Anonymous usage telemetry: what is collected and sent.", no_args_is_help=True
)
app.add_typer(telemetry_app, name="telemetry")


@telemetry_app.command("show")
def telemetry_show() -> None:
    """Print every telemetry message this device sent or queued, byte for byte, decoded."""
    from edge_agent.sync.settings import OUTBOX_FILE, sync_settings
    from edge_agent.telemetry import factory

    config = _config()
    try:
        linked = sync_settings(config) is not None
    except ValueError as exc:
        fail(str(exc))
    typer.echo(f"policy: {_telemetry_policy(linked=linked)}")
    typer.echo(factory.show(config.telemetry, config.data_dir, config.sync_dir / OUTBOX_FILE))


def _telemetry_policy(*, linked: bool) -> str:
    """The policy in words; `linked`: the device is in a fleet (it has somewhere to send)."""
    policy = _config().telemetry.policy
    if policy == "aggregate" and not linked:
        return "aggregate, but kept locally only: this device is in no fleet"
    window = _window_words(_config().telemetry.window_seconds)
    return {
        "off": "off: nothing is collected",
        "aggregate": f"aggregate: counts and histograms per {window}, anonymous, sent to the hub",
        "local-log": "local-log: collected and logged here, never sent",
    }[policy]


register_installed_commands(program)  # install-service, uninstall-service, doctor, self-update


def _bytes(count: int) -> str:
    """1451 -> '1.5 KB', 271616 -> '0.3 MB' (decimal units, as `models` shows sizes)."""
    if count < 1000:
        return f"{count} B"
    if count < 100_000:
        return f"{count / 1e3:.1f} KB"
    if count < 100_000_000_000:
        return f"{count / 1e6:.1f} MB"
    return f"{count / 1e9:.1f} GB"


def _window_words(seconds: int) -> str:
    """3600 -> 'hour', 300 -> '5 minutes', 90 -> '90 seconds'."""
    for unit, size in (("day", 86_400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            count = seconds // size
            return unit if count == 1 else f"{count} {unit}s"
    return f"{seconds} seconds"


def main() -> None:
    app()

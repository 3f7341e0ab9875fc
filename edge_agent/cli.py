"""`edge-agent`: serve, run, chat, models, status."""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from edge_agent import __version__
from edge_agent.config import AgentConfig, ApiConfig, load_config
from edge_agent.models import ModelNotFound, ModelRef, installed_models, resolve_model
from edge_agent.program import Program, serve_http

if TYPE_CHECKING:  # the runtime loads onnxruntime-genai: imported lazily so --version is fast
    from edge_agent.runtime.service import ModelService
    from edge_agent.runtime.swap import ActiveWatcher
    from edge_agent.sync.service import SyncService
    from edge_agent.telemetry.collector import Collector
    from edge_agent.telemetry.factory import Telemetry
    from edge_agent.updates.manager import Outcome, UpdateManager
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
    model: Annotated[str | None, typer.Option(help="installed model name or folder path")] = None,
    host: Annotated[str | None, typer.Option(help="address to bind (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port (default 8080)")] = None,
    name: Annotated[
        str | None, typer.Option(help="model id clients use (default: the model's name)")
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
    """Serve a model on the local OpenAI-compatible API."""
    from edge_agent.api import create_app
    from edge_agent.api.usage import UsageRecorder
    from edge_agent.runtime import inspect_model_folder
    from edge_agent.runtime.errors import ModelFolderError
    from edge_agent.runtime.memory import tune_allocator

    api = _api_settings(host, port, insecure_no_auth)  # before any work: it may refuse
    ref = _model(model)
    if name:
        ref = ModelRef(name, ref.path)
    try:
        inspect_model_folder(ref.path)  # refuse a broken folder before binding the port
    except ModelFolderError as exc:
        fail(str(exc), 2)
    tune_allocator()  # before the server's threads start allocating
    _finish_interrupted_update()
    config = _config()
    bind_host, bind_port = api.host, api.port
    sync = _start_sync()
    telemetry = _start_telemetry(sync)
    service = _service(ref, telemetry)
    usage = UsageRecorder(telemetry.collector if telemetry else None)
    application = create_app(api, [service], usage=usage)
    watcher: ActiveWatcher | None = None
    if ref.path.name == "active" and ref.path.is_symlink():  # installed: follow its updates
        from edge_agent.runtime.swap import ActiveWatcher
        from edge_agent.updates.errors import StateDamaged
        from edge_agent.updates.machine import Phase, StateFile

        updates = StateFile(config.update_state_path)

        def settled() -> bool:
            try:
                return updates.load().phase is Phase.IDLE
            except StateDamaged:  # keep the version that serves; the next update resets it
                return False

        watcher = ActiveWatcher(
            application.state.services,
            ref.name,
            lambda: _service(ref, telemetry),
            config.updates.watch_interval_seconds,
            settled=settled,
        )
        watcher.start()
    url = f"http://{bind_host}:{bind_port}"
    typer.echo(f"edge-agent {__version__}: serving model '{ref.name}' at {url}/v1", err=True)
    typer.echo(
        f"  try: curl {url}/v1/chat/completions -H 'Content-Type: application/json' "
        f'-d \'{{"model": "{ref.name}", "messages": [{{"role": "user", "content": "Hello"}}]}}\'',
        err=True,
    )
    try:
        serve_http(application, bind_host, bind_port)
    finally:
        if watcher is not None:
            watcher.stop(WATCHER_STOP_SECONDS)  # a version retiring mid-switch finishes first
        if telemetry is not None:
            telemetry.stop()  # the open window goes into the outbox before it closes
        if sync is not None:
            sync.stop()


def _api_settings(host: str | None, port: int | None, insecure_no_auth: bool) -> ApiConfig:
    """The API config with the command line's address; refuses an open API on a network."""
    from edge_agent.api.hosts import is_loopback

    api = _config().api
    api = api.model_copy(
        update={"host": host or api.host, "port": api.port if port is None else port}
    )
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
    hub_url: Annotated[str, typer.Argument(help="the hub, e.g. https://hub.example:8070")],
    device_id: Annotated[str, typer.Option("--device-id", help="this device's id")],
    token: Annotated[
        str,
        typer.Option(help="the token from `edge-hub device enroll` (<secret>@sha256:<CA hash>)"),
    ],
) -> None:
    """Join a fleet: check the hub against the token's CA fingerprint, make this device's
    key, get its certificate, trust the hub's releases. Writes nothing unless all checks
    pass; a TUF root pinned before is kept (only a root it signed may follow it)."""
    from edge_agent.sync.identity import EnrollmentFailed
    from edge_agent.sync.settings import identity_of

    config = _config()
    identity = identity_of(config)
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

    text = sys.stdin.read() if prompt == "-" else prompt
    try:
        session = ChatSession.open(_service(_model(model)))
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
    """Chat with a model in the terminal (empty line or Ctrl-D ends)."""
    from edge_agent.chat import ChatSession, SessionError

    try:
        session = ChatSession.open(_service(_model(model)), system=system)
        params = session.params(max_tokens=max_tokens, temperature=temperature)
        typer.echo(f"chatting with {session.name}; an empty line or Ctrl-D ends", err=True)
        while True:
            try:
                line = input("you> ")
            except EOFError:
                break
            if not line.strip():
                break
            sys.stdout.write("model> ")
            session.reply(line, params, sys.stdout)
            sys.stdout.write("\n")
    except SessionError as exc:
        fail(str(exc))


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
            typer.echo(
                f"  {version}\t{usage.size / 1e6:.1f} MB\tadds {usage.adds / 1e6:.1f} MB on disk"
            )


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
        with ReleaseSource(base, config.trust_dir, fetcher) as releases:
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

    columns = ("[progress.description]{task.description}", BarColumn(), DownloadColumn())
    with Progress(*columns, TransferSpeedColumn(), transient=True) as bar:
        task = bar.add_task(f"{name}: downloading", total=None)
        return manager.update(
            releases,
            name,
            version,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
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
    return {
        "off": "off: nothing is collected",
        "aggregate": "aggregate: hourly counts and histograms, anonymous, sent to the hub",
        "local-log": "local-log: collected and logged here, never sent",
    }[policy]


def main() -> None:
    app()

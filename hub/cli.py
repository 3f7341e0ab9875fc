"""`edge-hub`: the fleet hub's command line."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from edge_agent import __version__
from edge_agent.program import ListenError, Program, serve_http
from hub.config import HubConfig, load_config
from hub.console.cli import app as user_app
from hub.rollouts.cli import app as rollout_app
from hub.telemetry.cli import app as telemetry_app
from provisioning.cli import usb_app

if TYPE_CHECKING:  # the registry pulls in python-tuf and cryptography: loaded when used
    from sqlalchemy import Engine

    from hub.registry.repository import ReleaseRepository

program = Program("edge-hub", "The fleet hub: model registry, rollouts, telemetry.", load_config)
app = program.app
fail = program.fail
testmodel = typer.Typer(
    help="Random-weight test models (no downloads needed).", no_args_is_help=True
)
model_app = typer.Typer(help="Signed model releases.", no_args_is_help=True)
repo_app = typer.Typer(help="The release repository.", no_args_is_help=True)
keys_app = typer.Typer(help="Signing keys of the release repository.", no_args_is_help=True)
device_app = typer.Typer(
    help="Devices: the fleet registry, and access to the artifact server.", no_args_is_help=True
)
group_app = typer.Typer(help="Device groups.", no_args_is_help=True)
app.add_typer(testmodel, name="testmodel")
app.add_typer(model_app, name="model")
app.add_typer(repo_app, name="repo")
app.add_typer(keys_app, name="keys")
app.add_typer(device_app, name="device")
app.add_typer(group_app, name="group")
app.add_typer(telemetry_app, name="telemetry")
app.add_typer(rollout_app, name="rollout")
app.add_typer(user_app, name="user")
app.add_typer(usb_app, name="usb")  # the same bundles as `edge-provision usb`

RepoOption = Annotated[
    Path | None,
    typer.Option(
        "--repo",
        help="repository folder (default: the config's repository.dir)",
        show_default=False,
    ),
]
KeysOption = Annotated[
    Path | None,
    typer.Option(
        "--keys", help="keys folder (default: the config's repository.keys_dir)", show_default=False
    ),
]


def _config() -> HubConfig:
    return program.config


def _folders(repo: Path | None, keys: Path | None) -> tuple[Path, Path]:
    config = _config()
    if repo is not None and keys is None and config.repository.keys_dir is None:
        keys = repo.expanduser().parent / "keys"  # the same rule as the config's default
    return (repo or config.repository_dir).expanduser(), (keys or config.keys_dir).expanduser()


def _open(repo: Path | None, keys: Path | None) -> ReleaseRepository:
    from hub.registry.errors import RegistryError
    from hub.registry.repository import ReleaseRepository

    root, keys_dir = _folders(repo, keys)
    try:
        return ReleaseRepository.open(root, keys_dir)
    except RegistryError as exc:
        fail(str(exc))


# --- repo ---------------------------------------------------------------------------------


@app.command("import")
def import_stick(
    stick: Annotated[Path, typer.Argument(help="the stick's folder (its mount point)")],
    receipts: Annotated[
        Path, typer.Option(help="where receipts wait for the next `usb export --receipts`")
    ] = Path("~/.local/share/edge-hub/receipts"),
) -> None:
    """Ingest what devices of an air-gapped site wrote onto a stick, once; write receipts."""
    from hub.ingest.consumer import token_verifier
    from hub.telemetry.keys import seed_file
    from provisioning.usb_import import describe, import_returns

    config = _config()
    with _database() as engine:
        try:
            summary = import_returns(
                stick,
                engine,
                config.identity_dir / "ca.crt",
                receipts.expanduser(),
                token_verifier(seed_file(config.identity_dir)),
            )
        except OSError as exc:
            fail(str(exc))
    typer.echo(describe(summary))
    if summary.refused_files:
        raise typer.Exit(1)


@app.command("enroll-import")
def enroll_import(
    stick: Annotated[Path, typer.Argument(help="the stick with devices' enrollment requests")],
    repo: RepoOption = None,
    keys: KeysOption = None,
) -> None:
    """Answer offline enrollment requests on a stick: check each token proof, issue the
    certificate and write the device's configuration back onto the stick."""
    from edge_agent.protocol import METADATA_DIR
    from hub.fleet.authority import FleetAuthority
    from hub.fleet.enrollment import EnrollmentDesk
    from hub.fleet.https import tls_hosts
    from provisioning.enroll_import import answer_requests, repository_roots

    config = _config()
    repository = _open(repo, keys)
    authority = FleetAuthority(config)
    host = tls_hosts(config.artifacts.host, config.artifacts.tls_names)[0]
    with _database() as engine:
        desk = EnrollmentDesk(
            ca=authority.ca,
            tokens=authority.enrollment_tokens,
            downloads=authority.downloads,
            engine=engine,
            broker_url=config.broker.device_url,
            director_keys=authority.director.public_pems,
            tuf_root=repository.trusted_root_path(),
        )
        summary = answer_requests(
            stick,
            desk,
            f"https://{host}:{config.artifacts.port}",
            repository_roots(repository.root / METADATA_DIR),
        )
    for device_id in summary.enrolled:
        typer.echo(f"{device_id}: enrolled; its answer is on the stick")
    for reason in summary.refused:
        typer.echo(f"edge-hub: refused {reason}", err=True)
    if summary.refused:
        raise typer.Exit(1)


@repo_app.command("adopt-root")
def repo_adopt_root(
    root_file: Annotated[
        Path, typer.Argument(help="N.root.json from `edge-provision rotate-root`")
    ],
    repo: RepoOption = None,
    keys: KeysOption = None,
) -> None:
    """Publish the next root version, signed offline by the key ceremony."""
    from hub.registry.errors import RegistryError

    repository = _open(repo, keys)
    try:
        version = repository.adopt_root(root_file)
    except (RegistryError, OSError) as exc:
        fail(str(exc))
    typer.echo(f"root v{version} published; devices walk to it at their next update")


@repo_app.command("init")
def repo_init(
    repo: RepoOption = None,
    keys: KeysOption = None,
    root_keys: Annotated[int, typer.Option(help="how many root keys to make")] = 1,
    root_threshold: Annotated[int, typer.Option(help="root keys needed to sign a root")] = 1,
    root_metadata: Annotated[
        Path | None,
        typer.Option(
            help="root signed by the offline key ceremony (`edge-provision init-root`); "
            "--keys is then its hub package (online keys only). Production uses this"
        ),
    ] = None,
) -> None:
    """Create a release repository and its signing keys."""
    from hub.registry.errors import RegistryError
    from hub.registry.repository import ReleaseRepository

    root, keys_dir = _folders(repo, keys)
    try:
        created = ReleaseRepository.create(
            root,
            keys_dir,
            root_keys=root_keys,
            root_threshold=root_threshold,
            root_metadata=root_metadata,
        )
    except (RegistryError, ValueError, OSError) as exc:
        fail(str(exc))
    typer.echo(f"created a release repository in {created.root}")
    if root_metadata is not None:
        typer.echo(f"root from the key ceremony; online keys in {created.keys_dir}")
        typer.echo(f"devices pin this root: {created.trusted_root_path()}")
        return
    typer.echo(f"signing keys in {created.keys_dir} (move root-keys/ offline when not needed)")
    typer.echo(
        f"  root keys: {created.keys_dir / 'root-keys'}: keep OFFLINE (a key ceremony brings "
        "them back for a root change); whoever holds them controls every device"
    )
    typer.echo(
        f"  online keys (targets, snapshot, timestamp): {created.keys_dir}: private to the hub"
    )
    typer.echo(f"devices pin this root: {created.trusted_root_path()}")
    typer.echo(
        "  the hub's CA, HTTPS certificate and director key are made by the first "
        "`edge-hub serve` (the CA and director key in its identity and keys folders)"
    )


# --- model --------------------------------------------------------------------------------


@model_app.command("import")
def model_import(
    source: Annotated[
        Path, typer.Argument(help="Hugging Face model folder, or onnxruntime-genai folder")
    ],
    name: Annotated[str, typer.Option("--name", help="model name, e.g. contracts-small")],
    version: Annotated[str, typer.Option("--version", help="release version, e.g. 1.0.0")],
    repo: RepoOption = None,
    keys: KeysOption = None,
    precision: Annotated[str | None, typer.Option(help="weights: int4 (default), fp16")] = None,
    execution_provider: Annotated[
        str | None, typer.Option(help="builder target: cpu (default), cuda, dml")
    ] = None,
    block_size: Annotated[
        int | None, typer.Option(help="int4 quantization block size (default 128)")
    ] = None,
    accuracy_level: Annotated[
        int | None, typer.Option(help="int4 MatMul accuracy level (default 4: int8)")
    ] = None,
    adapter_targets: Annotated[
        str | None,
        typer.Option(
            help="build a base that accepts LoRA adapters on these projections, e.g. "
            "q_proj,k_proj,v_proj,o_proj"
        ),
    ] = None,
) -> None:
    """Convert (if needed), smoke-test, chunk and sign a model release."""
    from edge_agent import logs
    from hub.registry.convert import ConversionError, QuantOptions
    from hub.registry.errors import RegistryError
    from hub.registry.importer import import_release
    from hub.registry.lora_base import parse_targets
    from hub.registry.smoke import SmokeResult

    try:
        targets = parse_targets(adapter_targets) if adapter_targets is not None else ()
    except RegistryError as exc:
        fail(str(exc))
    options = None  # none given: the builder's settings chosen by bench/quantization.py
    if any(v is not None for v in (precision, execution_provider, block_size, accuracy_level)):
        default = QuantOptions()
        options = QuantOptions(
            precision=precision or default.precision,
            execution_provider=execution_provider or default.execution_provider,
            block_size=default.block_size if block_size is None else block_size,
            accuracy_level=default.accuracy_level if accuracy_level is None else accuracy_level,
        )
    repository = _open(repo, keys)
    console = logs.console()  # the log handler's too: its lines print above the spinner
    with console.status("starting") as status:
        current = ["starting"]

        def on_stage(text: str) -> None:
            current[0] = text
            console.log(text)
            status.update(text)

        def on_line(line: str) -> None:
            if line.strip():
                status.update(f"{current[0]}: {line.strip()[:80]}")

        def on_smoke(result: SmokeResult) -> None:
            console.log(
                f"smoke test passed: {result.completion_tokens} tokens in "
                f"{result.generate_seconds:.2f} s: {result.text!r}"
            )

        try:
            manifest = import_release(
                repository,
                source,
                name,
                version,
                options,
                on_stage=on_stage,
                on_line=on_line,
                on_smoke=on_smoke,
                adapter_targets=targets,
            )
        except (RegistryError, ConversionError) as exc:
            fail(str(exc))
    typer.echo(
        f"published {manifest.model} {manifest.version}: {len(manifest.files)} files, "
        f"{_size(manifest.total_bytes)}, {len(manifest.unique_chunks())} chunks"
    )


@model_app.command("import-adapter")
def model_import_adapter(
    peft_dir: Annotated[Path, typer.Argument(help="PEFT LoRA adapter folder")],
    base: Annotated[str, typer.Option("--base", help="its base release, NAME@VERSION")],
    name: Annotated[str, typer.Option("--name", help="adapter name, e.g. contracts-fr")],
    version: Annotated[str, typer.Option("--version", help="release version, e.g. 1.0.0")],
    repo: RepoOption = None,
    keys: KeysOption = None,
) -> None:
    """Convert a LoRA adapter for its base, smoke-test it on the base, sign a release."""
    from edge_agent import logs
    from hub.registry.adapter_import import import_adapter
    from hub.registry.errors import RegistryError

    repository = _open(repo, keys)
    console = logs.console()
    with console.status("starting") as status:

        def on_stage(text: str) -> None:
            console.log(text)
            status.update(text)

        try:
            manifest = import_adapter(repository, peft_dir, base, name, version, on_stage=on_stage)
        except RegistryError as exc:
            fail(str(exc))
    typer.echo(
        f"published adapter {manifest.model} {manifest.version} for {base}: "
        f"{_size(manifest.total_bytes)}, {len(manifest.unique_chunks())} chunks"
    )


@model_app.command("list")
def model_list(repo: RepoOption = None, keys: KeysOption = None) -> None:
    """List the releases the repository signs."""
    from rich.console import Console
    from rich.table import Table

    repository = _open(repo, keys)
    index = repository.index()
    if not index.models:
        typer.echo(f"no releases in {repository.root}")
        return
    table = Table("model", "version", "files", "size", "chunks")
    for model in sorted(index.models):
        for version in index.versions(model):
            manifest = repository.manifest(model, version)
            table.add_row(
                model,
                version,
                str(len(manifest.files)),
                _size(manifest.total_bytes),
                str(len(manifest.unique_chunks())),
            )
    Console(width=100).print(table)


@model_app.command("revoke")
def model_revoke(
    name: Annotated[str, typer.Argument(help="model name")],
    version: Annotated[str, typer.Argument(help="release version")],
    repo: RepoOption = None,
    keys: KeysOption = None,
) -> None:
    """Stop listing a release; devices refuse it from their next refresh on."""
    from hub.registry.errors import RegistryError

    try:
        _open(repo, keys).revoke(name, version)
    except (RegistryError, ValueError) as exc:
        fail(str(exc))
    typer.echo(f"revoked {name} {version}; its version number stays used")


# --- keys ---------------------------------------------------------------------------------


@keys_app.command("rotate")
def keys_rotate(
    role: Annotated[
        str, typer.Argument(help="targets, snapshot or timestamp; or https (the hub's certificate)")
    ],
    repo: RepoOption = None,
    keys: KeysOption = None,
) -> None:
    """Replace an online role's key (needs the root keys for the new root version), or the
    hub's HTTPS key and certificate (from the same CA: devices need nothing new)."""
    from hub.registry.errors import RegistryError

    if role == "https":
        _rotate_https()
        return
    try:
        repository = _open(repo, keys)
        repository.rotate_online_key(role)
    except (RegistryError, ValueError) as exc:
        fail(str(exc))
    typer.echo(f"rotated the {role} key; devices follow the new root on their next refresh")
    typer.echo(f"  the new {role} key is in {repository.keys_dir} (online, private to the hub)")
    typer.echo(
        f"  root keys were used from {repository.keys_dir / 'root-keys'}: move that folder "
        "back offline now"
    )


def _rotate_https() -> None:
    from hub.fleet.authority import FleetAuthority
    from hub.fleet.https import https_files, tls_hosts

    config = _config()
    hosts = tls_hosts(config.artifacts.host, config.artifacts.tls_names)
    files, _made = https_files(FleetAuthority(config).ca, hosts, rotate=True)
    typer.echo(f"made a new HTTPS certificate {files.cert} for {', '.join(hosts)}")
    typer.echo(f"  its key {files.key} (0600) stays on the hub; restart `edge-hub serve`")
    typer.echo(f"  devices trust the CA {files.ca}, which did not change")


# --- device -------------------------------------------------------------------------------


@device_app.command("token")
def device_token(device_id: Annotated[str, typer.Argument(help="the device's id")]) -> None:
    """Issue a download token for an enrolled device (replaces its old one); printed once.
    A revoked or unknown device gets none."""
    from hub.artifacts.tokens import TokenFileError, TokenStore
    from hub.fleet import registry

    store = TokenStore(_config().tokens_file)
    try:
        with _database() as engine:
            device = registry.get_device(engine, device_id)
        if device.enrolled_at is None:
            fail(
                f"{device_id} has not finished enrolling: it gets its download token when "
                "`edge-agent enroll` succeeds"
            )
        if device.revoked_at is not None:
            fail(
                f"{device_id} was revoked at {device.revoked_at}: it gets no download token; "
                f"enroll it again (`edge-hub device enroll {device_id}`) to readmit it"
            )
        token = store.issue(device_id)
    except registry.RegistryError as exc:
        fail(f"{exc}: only a device made with `edge-hub device enroll` gets a download token")
    except (TokenFileError, ValueError) as exc:
        fail(str(exc))
    typer.echo(f"token for {device_id} (shown only now; the hub keeps its hash):", err=True)
    typer.echo(token)
    typer.echo(f"  its hash is kept in {store.path}", err=True)


@contextmanager
def _database() -> Iterator[Engine]:
    """The hub database, migrated to the newest schema; closed at the end of the block."""
    from hub import db

    try:
        engine = db.make_engine(_config().database_url)
        db.migrate(engine)
    except Exception as exc:  # a bad URL or an unreachable server: say which, no traceback
        fail(f"cannot open the hub database: {exc}")
    try:
        yield engine
    finally:
        engine.dispose()


def _when(value: object) -> str:
    return "-" if value is None else str(value)


@device_app.command("list")
def device_list(
    group: Annotated[str | None, typer.Option(help="only the devices of this group")] = None,
) -> None:
    """The devices the hub knows, with their group and when they were last seen."""
    from hub.fleet import registry

    with _database() as engine:
        devices = registry.list_devices(engine, group=group)
    if not devices:
        typer.echo("no devices")
        return
    for device in devices:
        state = "revoked" if device.revoked_at is not None else "active"
        typer.echo(
            f"{device.id}\tgroup={device.group or '-'}\t{state}\t"
            f"last_seen={_when(device.last_seen)}"
        )


@device_app.command("show")
def device_show(device_id: Annotated[str, typer.Argument(help="the device's id")]) -> None:
    """A device's record, the latest state of its models and its recent install events."""
    from hub.fleet import registry

    try:
        with _database() as engine:
            details = registry.show_device(engine, device_id)
    except registry.RegistryError as exc:
        fail(str(exc))
    device = details.device
    typer.echo(f"device:      {device.id}")
    typer.echo(f"group:       {device.group or '-'}")
    tags = ", ".join(f"{k}={v}" for k, v in sorted(device.tags.items()))
    typer.echo(f"tags:        {tags or '-'}")
    typer.echo(f"enrolled_at: {_when(device.enrolled_at)}")
    typer.echo(f"revoked_at:  {_when(device.revoked_at)}")
    typer.echo(f"last_seen:   {_when(device.last_seen)}")
    for m in details.models:
        typer.echo(
            f"model {m.model}: active={m.active or '-'} previous={m.previous or '-'} "
            f"pending={m.pending or '-'} floor={m.floor or '-'} phase={m.phase} "
            f"(reported {m.updated_at})"
            + (f"\n  held on the device: {m.held}" if m.held else "")
            + (f"\n  last result: {m.last_result}" if m.last_result else "")
            + (f": {m.last_error}" if m.last_error else "")
        )
    for e in details.recent_events:
        typer.echo(
            f"event {e.at} {e.model} {e.version} {e.event}" + (f": {e.error}" if e.error else "")
        )


@device_app.command("enroll")
def device_enroll(
    device_id: Annotated[str, typer.Argument(help="the new device's id")],
    group: Annotated[str | None, typer.Option(help="put the device in this group")] = None,
    hours: Annotated[int, typer.Option(help="how long the token may be used")] = 24,
) -> None:
    """Make a one-time enrollment token for a device; printed once, with the command the
    device runs."""
    from datetime import timedelta

    from edge_agent.sync.hubtrust import Ticket
    from hub.fleet import registry
    from hub.fleet.authority import FleetAuthority
    from hub.fleet.https import fingerprint, tls_hosts

    config = _config()
    authority = FleetAuthority(config)
    try:
        with _database() as engine:
            registry.prepare(engine, device_id, group=group)
        secret = authority.enrollment_tokens.create(device_id, ttl=timedelta(hours=hours))
    except (registry.RegistryError, ValueError) as exc:
        fail(str(exc))
    # The token binds the hub: the device refuses any server that cannot show this CA.
    token = Ticket(secret, fingerprint(authority.ca))
    host = tls_hosts(config.artifacts.host, config.artifacts.tls_names)[0]
    url = f"https://{host}:{config.artifacts.port}"
    typer.echo(f"enrollment token for {device_id}, valid {hours} h (shown only now):", err=True)
    typer.echo(str(token))
    typer.echo(f"  it names the hub CA {token.ca_fingerprint}", err=True)
    typer.echo(
        f"  the hub keeps only the token's hash, in {authority.enrollment_tokens.path}; the "
        f"CA key {authority.ca.ca_key_path} stays private to the hub (never copy it)",
        err=True,
    )
    typer.echo(
        f"on the device: edge-agent enroll {url} --device-id {device_id} --token {token}",
        err=True,
    )


@device_app.command("revoke")
def device_revoke(device_id: Annotated[str, typer.Argument(help="the device to cut off")]) -> None:
    """Revoke a device: its certificates go on the broker's revocation list (a running hub
    disconnects it within seconds), its download token and any unused enrollment token stop
    working."""
    from hub.fleet import registry
    from hub.fleet.authority import FleetAuthority
    from hub.fleet.revocation import revoke_device

    authority = FleetAuthority(_config())
    try:
        with _database() as engine:
            done = revoke_device(authority, engine, device_id)
    except registry.RegistryError as exc:
        fail(str(exc))
    typer.echo(
        f"revoked {device_id}: {done.certificates} certificate(s) on the revocation list, "
        f"{done.enrollment_tokens} unused enrollment token(s) voided"
    )


@device_app.command("assign")
def device_assign(
    model: Annotated[str, typer.Argument(help="model name")],
    version: Annotated[str, typer.Argument(help="release version (must be published)")],
    device_ids: Annotated[
        list[str] | None, typer.Option("--device", help="a device (repeatable)")
    ] = None,
    group: Annotated[str | None, typer.Option(help="every device of this group")] = None,
    repo: RepoOption = None,
    keys: KeysOption = None,
) -> None:
    """Sign desired state: the devices install this release (a running hub publishes it)."""
    from hub.fleet import desired, registry
    from hub.fleet.authority import FleetAuthority

    repository = _open(repo, keys)
    index = repository.index()
    targets = list(device_ids or [])
    try:
        with _database() as engine:
            if group is not None:
                registry.get_group(engine, group)
                targets += [d.id for d in registry.list_devices(engine, group=group)]
            if not targets:
                fail("no device: pass --device ID or --group NAME (with members)", 2)
            records = desired.assign(
                engine,
                FleetAuthority(_config()).director.private_key(),
                sorted(set(targets)),
                model,
                version,
                listed=lambda m, v: v in index.versions(m),
            )
    except (registry.RegistryError, desired.NotListed) as exc:
        fail(str(exc))
    for record in records:
        typer.echo(f"{record.device_id}: desired {model} {version} (sequence {record.sequence})")


@group_app.command("create")
def group_create(name: Annotated[str, typer.Argument(help="the group's name")]) -> None:
    """Create an empty group."""
    from hub.fleet import registry

    try:
        with _database() as engine:
            registry.create_group(engine, name)
    except (registry.RegistryError, ValueError) as exc:
        fail(str(exc))
    typer.echo(f"created group {name}")


@group_app.command("add")
def group_add(
    name: Annotated[str, typer.Argument(help="the group")],
    device_id: Annotated[str, typer.Argument(help="the device to move into it")],
) -> None:
    """Put a device in a group (it leaves its previous group)."""
    from hub.fleet import registry

    try:
        with _database() as engine:
            registry.add_to_group(engine, name, device_id)
    except registry.RegistryError as exc:
        fail(str(exc))
    typer.echo(f"{device_id} is in group {name}")


# --- serve --------------------------------------------------------------------------------


@app.command()
def serve(
    repo: RepoOption = None,
    keys: KeysOption = None,
    host: Annotated[str | None, typer.Option(help="address to bind (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port (default 8070)")] = None,
    insecure_http: Annotated[
        bool,
        typer.Option(help="plain HTTP instead of HTTPS, on a loopback address only"),
    ] = False,
) -> None:
    """Run the hub: the broker, ingest, desired state, and the HTTPS server for releases
    and enrollment (certificate from the hub's CA, made on first start)."""
    from hub.artifacts.server import create_app
    from hub.broker import BrokerError
    from hub.console.accounts import ensure_first_admin
    from hub.console.app import console_mount
    from hub.console.sessions import ConsoleSessions
    from hub.fleet.enrollment import EnrollmentDesk, enrollment_route, hub_ca_route
    from hub.fleet.https import fingerprint, https_files, is_loopback, tls_hosts
    from hub.rollouts.api import RolloutDesk, api_mount
    from hub.rollouts.auth import OperatorTokens
    from hub.rollouts.releases import repository_check
    from hub.service import HubService
    from hub.telemetry.issuance import TokenIssuer, token_route

    config = _config()
    bind_host = host or config.artifacts.host
    bind_port = config.artifacts.port if port is None else port
    plain = insecure_http or config.artifacts.insecure_http
    if plain and not is_loopback(bind_host):
        fail(
            f"plain HTTP is allowed on a loopback address only, not {bind_host}: drop "
            "--insecure-http ([artifacts] insecure_http) to serve HTTPS, or bind 127.0.0.1 "
            "behind a TLS proxy"
        )
    repository = _open(repo, keys)
    hub = HubService(config, repository)
    try:
        hub.start()
    except (BrokerError, TimeoutError) as exc:
        fail(f"the hub could not start: {exc}")
    authority = hub.authority
    desk = EnrollmentDesk(
        ca=authority.ca,
        tokens=authority.enrollment_tokens,
        downloads=authority.downloads,
        engine=hub.engine,
        broker_url=config.broker.device_url,
        director_keys=authority.director.public_pems,
        tuf_root=repository.trusted_root_path(),
    )
    issuer = TokenIssuer(hub.engine, hub.token_keys)
    rollout_desk = RolloutDesk(
        engine=hub.engine,
        releases=repository_check(repository),
        key=authority.director.private_key,
        authenticators=[
            OperatorTokens(config.api.operator_tokens_file.expanduser()),
            ConsoleSessions(hub.engine),
        ],
    )
    application = create_app(
        repository.root,
        authority.downloads,
        [
            hub_ca_route(authority.ca),
            enrollment_route(desk),
            token_route(issuer, authority.downloads),
            api_mount(rollout_desk),
            console_mount(
                rollout_desk,
                config.telemetry.k_anonymity,
                repository=repository,
                authority=authority,
            ),
        ],
    )
    one_time = ensure_first_admin(hub.engine)
    tls = None
    if not plain:
        files, made = https_files(authority.ca, tls_hosts(bind_host, config.artifacts.tls_names))
        tls = (files.cert, files.key)
        if made:
            _say(f"  made the HTTPS certificate {files.cert} (key {files.key}, keep it private)")
        _say(
            f"  hub CA {files.ca} ({fingerprint(authority.ca)}); its key "
            f"{authority.ca.ca_key_path} stays private to the hub"
        )
    scheme = "http" if plain else "https"
    _say(f"edge-hub {__version__}: releases and enrollment at {scheme}://{bind_host}:{bind_port}")
    _say(f"  repository {repository.root}, database {_shown_url(config.database_url)}")
    _say(f"  telemetry token seed {hub.token_seed_file} stays private to the hub")
    _say(f"  console at {scheme}://{bind_host}:{bind_port}/console/")
    if one_time is not None:
        _say(f"  first console user: admin, one-time password {one_time} (shown once)")
    where = hub.broker.description if hub.broker is not None else "external broker"
    _say(f"  {where} at {config.broker.hub_url}; devices connect to {config.broker.device_url}")
    try:
        serve_http(application, bind_host, bind_port, tls=tls)
    except ListenError as exc:
        fail(str(exc))
    finally:
        hub.stop()


@app.command()
def demo(
    folder: Annotated[
        Path, typer.Option("--dir", help="the demo's folder: its hub config, data and devices")
    ] = Path("~/.local/share/edge-hub-demo"),
    model: Annotated[
        str, typer.Option(help="test model: small (SmolLM2-360M shape) or tiny (1 MB, fast)")
    ] = "small",
    devices: Annotated[int, typer.Option(help="how many demo devices")] = 2,
    hub_port: Annotated[
        int | None, typer.Option(help="the hub's HTTP port (default 8070 unless taken; 0: any)")
    ] = None,
    broker_port: Annotated[
        int | None, typer.Option(help="the broker's port (default: any free port)")
    ] = None,
    agent_port: Annotated[
        int | None,
        typer.Option(help="the first device's API port, then +1 each (default 8080 unless taken)"),
    ] = None,
) -> None:
    """Run the hub with a demo fleet (SQLite, a managed Mosquitto), all in one folder:
    signed releases, enrolled devices, a rollout; until Ctrl-C."""
    from hub.demo import DemoError, DemoOptions, run_demo

    try:
        run_demo(DemoOptions(folder, model, devices, hub_port, broker_port, agent_port))
    except DemoError as exc:
        fail(str(exc))


def _say(text: str) -> None:
    typer.echo(text, err=True)


def _shown_url(url: str) -> str:
    """A database URL without its password."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


# --- testmodel ----------------------------------------------------------------------------


@testmodel.command("build")
def testmodel_build(
    shape: Annotated[str, typer.Argument(help="tiny (about 1 MB) or small (SmolLM2-360M shape)")],
    print_path: Annotated[
        bool, typer.Option("--print-path", help="print only the model folder on stdout")
    ] = False,
) -> None:
    """Build (or reuse from the cache) a test model and print its folder."""
    from edge_agent import logs
    from hub.registry import synthetic

    if shape not in synthetic.RECIPES:
        typer.echo(
            f"edge-hub: error: unknown shape '{shape}': choose {', '.join(synthetic.RECIPES)}",
            err=True,
        )
        raise typer.Exit(2)
    recipe = synthetic.RECIPES[shape]
    console = logs.console()  # shared with the log handler; no source path after each line
    target = synthetic.model_dir_for(recipe)
    if (target / "genai_config.json").is_file():
        path = target
    else:
        with console.status(f"building the '{shape}' test model") as status:
            path = synthetic.build(
                recipe,
                on_step=lambda step: status.update(f"'{shape}' test model: {step}"),
                on_line=lambda line: console.log(line) if "error" in line.lower() else None,
            )
        console.log(f"built the '{shape}' test model in {path}")
    typer.echo(str(path) if print_path else f"{shape}: {path}")


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KB", "MB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def main() -> None:
    app()

"""`edge-provision`: the offline key ceremony and USB bundles for air-gapped sites."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer

from edge_agent import __version__

app = typer.Typer(
    help="Provision devices and carry signed releases to air-gapped sites.",
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"edge-provision {__version__}")
        raise typer.Exit


@app.callback(invoke_without_command=True)
def main_options(
    ctx: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version")
    ] = False,
) -> None:
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"edge-provision: {message}", err=True)
    raise typer.Exit(code)


def _passphrases(files: list[Path] | None, count: int, what: str) -> list[bytes]:
    from provisioning.ceremony import passphrase_from

    if files:
        return [passphrase_from(path) for path in files]
    return [
        typer.prompt(
            f"passphrase for {what} {n + 1}", hide_input=True, confirmation_prompt=True
        ).encode()
        for n in range(count)
    ]


def _passphrase(file: Path | None, what: str) -> bytes:
    """One passphrase: from the file when one is named, else asked for twice."""
    return _passphrases([file] if file else None, 1, what)[0]


PassFiles = Annotated[
    list[Path] | None,
    typer.Option(
        "--passphrase-file",
        help="a file whose first line is one key holder's passphrase (repeat; else prompted)",
    ),
]


@app.command("init-root")
def init_root(
    ceremony: Annotated[Path, typer.Option(help="offline folder for the encrypted keys")],
    hub_package: Annotated[
        Path, typer.Option(help="folder to carry to the hub: the root and its online keys")
    ],
    root_keys: Annotated[int, typer.Option(help="root keys, one per key holder")] = 3,
    threshold: Annotated[int, typer.Option(help="root keys needed to sign a root")] = 2,
    passphrase_file: PassFiles = None,
    bundle_passphrase_file: Annotated[
        Path | None, typer.Option(help="passphrase file for the offline-bundle key")
    ] = None,
) -> None:
    """Make the fleet's root keys (each encrypted with its own passphrase), the online keys,
    the offline-bundle key and the first root metadata. Run on an offline machine."""
    from provisioning.ceremony import CeremonyError
    from provisioning.ceremony import init_root as make_root

    try:
        passes = _passphrases(passphrase_file, root_keys, "root key")
        if len(passes) != root_keys:
            _fail(f"{len(passes)} passphrase files for {root_keys} root keys", 2)
        bundle = _passphrase(bundle_passphrase_file, "the offline-bundle key")
        result = make_root(ceremony, hub_package, passes, threshold, bundle)
    except CeremonyError as exc:
        _fail(str(exc))
    typer.echo(f"root v{result.version}: {result.root_file} ({threshold} of {root_keys} keys)")
    typer.echo(f"encrypted root and offline-bundle keys: {ceremony} (keep OFFLINE)")
    typer.echo(
        f"carry {hub_package} to the hub: edge-hub repo init --root-metadata "
        f"{result.hub_root_file} --keys {hub_package}"
    )


@app.command("rotate-root")
def rotate_root(
    ceremony: Annotated[Path, typer.Option(help="the ceremony folder")],
    hub_package: Annotated[Path, typer.Option(help="folder to carry the new root to the hub")],
    passphrase_file: PassFiles = None,
    add_keys: Annotated[int, typer.Option(help="new root keys to make")] = 0,
    new_passphrase_file: Annotated[
        list[Path] | None, typer.Option(help="passphrase file per new root key")
    ] = None,
    retire: Annotated[list[str] | None, typer.Option(help="root key id to drop")] = None,
    threshold: Annotated[int | None, typer.Option(help="the new root threshold")] = None,
) -> None:
    """Sign root version N+1 with the old threshold and the new one."""
    from provisioning.ceremony import CeremonyError
    from provisioning.ceremony import rotate_root as rotate

    try:
        passes = _passphrases(passphrase_file, 1, "a root key holder")
        new = _passphrases(new_passphrase_file, add_keys, "new root key") if add_keys else []
        result = rotate(
            ceremony,
            hub_package,
            passes,
            new_root_passphrases=new,
            retire=retire or [],
            threshold=threshold,
        )
    except CeremonyError as exc:
        _fail(str(exc))
    typer.echo(f"root v{result.version}: {result.root_file}")
    typer.echo(f"on the hub: edge-hub repo adopt-root {result.hub_root_file}")


ca_app = typer.Typer(
    help="An offline device root CA that signs the hub's CA (the hub never holds the root key).",
    no_args_is_help=True,
)
app.add_typer(ca_app, name="device-ca")


@ca_app.command("init")
def ca_init(
    ceremony: Annotated[Path, typer.Option(help="the ceremony folder (offline)")],
    passphrase_file: Annotated[
        Path | None, typer.Option(help="the root CA key's passphrase")
    ] = None,
) -> None:
    """Make the offline device root CA (once); prints its fingerprint for the hub's operator."""
    from provisioning.ceremony import CeremonyError
    from provisioning.device_ca import init_device_root

    try:
        passphrase = _passphrase(passphrase_file, "the device root CA key")
        fingerprint = init_device_root(ceremony, passphrase)
    except CeremonyError as exc:
        _fail(str(exc))
    typer.echo(f"device root CA {fingerprint}")
    typer.echo(
        "read this fingerprint to the hub's operator (out of band): `device-ca install` needs it"
    )


@ca_app.command("request")
def ca_request(
    identity: Annotated[Path, typer.Option(help="the hub's identity folder (hub's identity_dir)")],
) -> None:
    """On the hub: make its CA key and a signing request to carry to the ceremony."""
    from provisioning.ceremony import CeremonyError
    from provisioning.device_ca import request_hub_ca

    try:
        path = request_hub_ca(identity.expanduser())
    except CeremonyError as exc:
        _fail(str(exc))
    typer.echo(f"carry {path} to the ceremony: edge-provision device-ca sign {path.name} ...")


@ca_app.command("sign")
def ca_sign(
    request: Annotated[Path, typer.Argument(help="the hub's ca.csr")],
    ceremony: Annotated[Path, typer.Option(help="the ceremony folder (offline)")],
    out: Annotated[Path, typer.Option(help="where to write the chain for the hub")],
    days: Annotated[int, typer.Option(help="validity of the hub's CA")] = 5 * 365,
    passphrase_file: Annotated[
        Path | None, typer.Option(help="the root CA key's passphrase")
    ] = None,
) -> None:
    """Offline: sign the hub's CA as an intermediate of the device root CA."""
    from edge_agent.atomic import write_atomic
    from provisioning.ceremony import CeremonyError
    from provisioning.device_ca import sign_hub_ca

    try:
        passphrase = _passphrase(passphrase_file, "the device root CA key")
        chain = sign_hub_ca(ceremony, passphrase, request.read_bytes(), days=days)
    except (CeremonyError, OSError) as exc:
        _fail(str(exc))
    write_atomic(out, chain)
    typer.echo(f"carry {out} to the hub: edge-provision device-ca install {out.name} ...")


@ca_app.command("install")
def ca_install(
    chain: Annotated[Path, typer.Argument(help="the chain `device-ca sign` wrote")],
    identity: Annotated[Path, typer.Option(help="the hub's identity folder")],
    root_fingerprint: Annotated[
        str, typer.Option(help="sha256:... of the device root CA, as `device-ca init` printed it")
    ],
) -> None:
    """On the hub: check the chain against the root's fingerprint and make it the hub's CA."""
    from provisioning.ceremony import CeremonyError
    from provisioning.device_ca import install_hub_ca

    try:
        install_hub_ca(identity.expanduser(), chain.read_bytes(), root_fingerprint)
    except (CeremonyError, OSError) as exc:
        _fail(f"the hub's CA was not changed: {exc}")
    typer.echo("the hub's device CA is signed by the offline root; devices enroll as before")


usb_app = typer.Typer(help="USB bundles for air-gapped sites.", no_args_is_help=True)
app.add_typer(usb_app, name="usb")


@contextmanager
def _progress_bars() -> Iterator[object]:
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        transient=False,
    ) as bars:
        tasks: dict[str, object] = {}

        def update(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bars.add_task(phase, total=total)
            bars.update(tasks[phase], completed=done, total=total)  # type: ignore[arg-type]

        yield update


@usb_app.command("export")
def usb_export(
    stick: Annotated[Path, typer.Argument(help="the stick's folder (its mount point)")],
    repo: Annotated[Path, typer.Option(help="the hub's release repository folder")],
    bundle_key: Annotated[Path, typer.Option(help="the offline-bundle key file (encrypted)")],
    release: Annotated[list[str], typer.Option(help="MODEL=VERSION to carry (repeat)")],
    site: Annotated[str, typer.Option(help="the site's name, written into the authorisation")],
    device: Annotated[list[str] | None, typer.Option(help="a device id (repeat)")] = None,
    group: Annotated[list[str] | None, typer.Option(help="a device group (repeat)")] = None,
    db: Annotated[
        str | None, typer.Option(help="hub database URL: groups and what devices hold")
    ] = None,
    full: Annotated[bool, typer.Option(help="carry every chunk, whatever devices hold")] = False,
    days: Annotated[int, typer.Option(help="validity of the authorisation (at most 90)")] = 30,
    bundle_passphrase_file: Annotated[Path | None, typer.Option()] = None,
    receipts: Annotated[
        Path | None, typer.Option(help="receipts folder of `edge-hub import` to carry back")
    ] = None,
    peer: Annotated[
        list[str] | None,
        typer.Option(help="a site peer's chunk server, https://host:port (repeat)"),
    ] = None,
) -> None:
    """Write the releases, only the chunks the site lacks, and a signed authorisation."""
    from tuf.api.metadata import Metadata, Root

    from edge_agent.protocol import METADATA_DIR
    from edge_agent.protocol.bundle import BundleRelease
    from provisioning.ceremony import CeremonyError, bundle_signer
    from provisioning.usb_export import ExportError, describe, export_bundle

    devices, groups = list(device or []), list(group or [])
    if group and not db:
        _fail("--group needs --db (the hub database) to find its devices", 2)
    try:
        releases = [BundleRelease(model=r.split("=")[0], version=r.split("=")[1]) for r in release]
    except (IndexError, ValueError) as exc:
        _fail(f"--release takes MODEL=VERSION: {exc}", 2)
    held = None
    desired = None
    if db:
        from hub.db import make_engine
        from provisioning.fleet_state import desired_states, held_versions, site_devices

        engine = make_engine(db)
        try:
            devices = site_devices(engine, devices, groups)
        except ValueError as exc:
            _fail(str(exc), 2)
        held = None if full else held_versions(engine, devices)
        desired = desired_states(engine, devices)
    if not devices:
        _fail("name the devices the stick is for: --device ID or --group NAME with --db", 2)
    roots = sorted(
        (repo / METADATA_DIR).glob("*.root.json"), key=lambda p: int(p.name.split(".")[0])
    )
    if not roots:
        _fail(f"{repo}: no release repository here", 2)
    root = Metadata[Root].from_file(str(roots[-1])).signed
    try:
        passphrase = _passphrase(bundle_passphrase_file, "the offline-bundle key")
        signer = bundle_signer(bundle_key, passphrase, root)
        with _progress_bars() as progress:
            summary = export_bundle(
                repo,
                stick,
                releases=releases,
                devices=devices,
                groups=groups,
                site=site,
                signers=[signer],
                held=held,
                validity=timedelta(days=days),
                progress=progress,  # type: ignore[arg-type]
                receipts_dir=receipts.expanduser() if receipts else None,
                desired=desired,
                peers=list(peer or []),
            )
    except (CeremonyError, ExportError, OSError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(describe(summary))


def main() -> None:
    app()

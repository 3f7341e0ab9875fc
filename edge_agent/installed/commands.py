"""The installed service's commands: install-service, uninstall-service, doctor and
self-update. Registered on the `edge-agent` command line by edge_agent/cli.py."""

from __future__ import annotations

import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from packaging.version import Version

from edge_agent import __version__
from edge_agent.config import AgentConfig
from edge_agent.installed import unit as units
from edge_agent.program import Program


def register(program: Program[AgentConfig]) -> None:
    app, fail = program.app, program.fail

    @app.command("install-service")
    def install_service(
        user: Annotated[str, typer.Option(help="the service's own user")] = units.DEFAULT_USER,
        config: Annotated[Path, typer.Option(help="config file")] = units.DEFAULT_CONFIG,
        root: Annotated[Path, typer.Option(help="install root")] = units.DEFAULT_ROOT,
        python: Annotated[Path | None, typer.Option(help="interpreter (default: this one)")] = None,
        unit_dir: Annotated[Path, typer.Option(help="unit folder")] = units.DEFAULT_UNIT_DIR,
        enable: Annotated[bool, typer.Option(help="enable and start it")] = True,
    ) -> None:
        """Install the hardened systemd unit (started by the A/B launcher)."""
        interpreter = python or Path(sys.executable).resolve()
        api = program.config.api  # the launcher holds this socket across agent switches
        settings = units.UnitSettings(
            python=interpreter, root=root, config=config, user=user, listen=f"{api.host}:{api.port}"
        )
        try:
            written = units.install_service(settings, unit_dir, enable=enable)
        except (OSError, RuntimeError) as exc:
            fail(str(exc))
        started = " and started" if units.systemd_running() and enable else ""
        typer.echo(f"unit {written} installed{started}")
        if not units.systemd_running():
            typer.echo("systemd is not running here: start it with the unit's ExecStart line")

    @app.command("uninstall-service")
    def uninstall_service(
        unit_dir: Annotated[Path, typer.Option(help="unit folder")] = units.DEFAULT_UNIT_DIR,
    ) -> None:
        """Stop, disable and remove the systemd unit (the install stays)."""
        try:
            removed = units.uninstall_service(unit_dir)
        except (OSError, RuntimeError) as exc:
            fail(str(exc))
        typer.echo("unit removed" if removed else f"no unit in {unit_dir}")

    @app.command()
    def doctor(
        root: Annotated[Path | None, typer.Option(help="install root")] = None,
    ) -> None:
        """Check the install, slots, models, trust and disk; say what to do about problems."""
        from edge_agent.installed.doctor import examine

        findings = examine(program.config, root)
        for finding in findings:
            typer.echo(finding.line())
        if not all(f.ok for f in findings):
            raise typer.Exit(1)

    @app.command("self-update")
    def self_update(
        source: Annotated[str | None, typer.Option("--from", help="hub URL or folder")] = None,
        version: Annotated[str | None, typer.Option(help="a specific version")] = None,
        root: Annotated[Path | None, typer.Option(help="install root")] = None,
        defer: Annotated[str | None, typer.Option(help="defer self-updates, e.g. 7d")] = None,
        pin: Annotated[str | None, typer.Option(help="keep this agent version")] = None,
        unpin: Annotated[bool, typer.Option(help="follow the fleet again")] = False,
    ) -> None:
        """Install the newest signed agent release into the other slot and switch to it."""
        from edge_agent.installed import policy as policies

        data_dir = program.config.data_dir
        try:
            if defer or pin or unpin:
                chosen = policies.load_policy(data_dir)
                if defer:
                    chosen = policies.defer(data_dir, defer)
                if pin or unpin:
                    chosen.pinned = pin
                    policies.save_policy(data_dir, chosen)
                typer.echo(f"self-update: deferred until {chosen.deferred_until or '-'}, "
                           f"pinned to {chosen.pinned or '-'}")  # fmt: skip
                return
            _self_update(program, source, version, root)
        except ValueError as exc:
            fail(str(exc), 2)


def _self_update(
    program: Program[AgentConfig], source: str | None, version: str | None, root: Path | None
) -> None:
    from edge_agent.installed.launcher import LauncherError, load_state, other_slot, request_trial
    from edge_agent.installed.policy import load_policy
    from edge_agent.installed.release import AGENT_RELEASE, fetch_installer, run_installer
    from edge_agent.installed.switch import launched_slot
    from edge_agent.updates.errors import UpdateError
    from edge_agent.updates.fetchers import fetcher_for
    from edge_agent.updates.source import ReleaseSource

    config, fail = program.config, program.fail
    launched = launched_slot()
    install_root = root or (launched[0] if launched else units.DEFAULT_ROOT)
    try:
        state = load_state(install_root)
    except LauncherError as exc:
        fail(str(exc))
    if state.committed is None:
        fail(f"{install_root} holds no installed agent: self-update needs the installer's slots")
    origin = source or config.updates.source
    if not origin:
        fail("no update source: pass --from URL|PATH or set [updates] source", 2)
    target = other_slot(state.committed)
    try:
        base, fetcher = fetcher_for(origin, config.updates.token or None, 0)
        with ReleaseSource(base, config.trust_dir, fetcher) as releases:
            wanted = version or releases.index().latest(AGENT_RELEASE)
            if wanted is None:
                fail(f"{origin} lists no agent release")
            if Version(wanted) <= Version(__version__):
                typer.echo(f"edge-agent {__version__} runs; {wanted} is not newer")
                return
            if wanted in state.failed_versions:
                fail(f"edge-agent {wanted} failed its health check here before; not again")
            blocked = load_policy(config.data_dir).blocks(wanted, datetime.now(UTC))
            if blocked:
                fail(blocked)
            with tempfile.TemporaryDirectory(prefix=".incoming-", dir=install_root) as staging:
                folder = Path(staging) / "installer"
                fetch_installer(releases, wanted, folder)  # every byte verified first
                run_installer(folder, install_root, target, config.data_dir)
    except UpdateError as exc:
        fail(str(exc))
    request_trial(install_root, target, wanted)
    typer.echo(f"edge-agent {wanted} installed in slot {target}; the service switches to it "
               "once its requests are done, and falls back if it does not serve")  # fmt: skip

"""`edge-hub rollout ...`: create, list, status, approve, pause, resume, abort, rollback, and
operator API tokens. Registered on the hub's app in hub/cli.py, whose config and database it
uses (imported when a command runs: hub/cli.py imports this module).

Commands act on the hub database directly, as the named operator (`--operator`, default the
login name); the running hub's rollout job carries the change on within seconds.
"""

from __future__ import annotations

import getpass
import json
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

app = typer.Typer(help="Fleet rollouts: waves, gates, approval, pause and rollback.")

OperatorOption = Annotated[
    str | None,
    typer.Option("--operator", help="who acts (default: the login name); the audit log keeps it"),
]
ReasonOption = Annotated[str | None, typer.Option("--reason", help="why; kept in the audit log")]
IdArgument = Annotated[int, typer.Argument(help="the rollout's id (`edge-hub rollout list`)")]


def _fail(message: str, code: int = 1) -> NoReturn:
    from hub import cli as hub_cli

    hub_cli.fail(message, code)


def _operator(name: str | None) -> str:
    return name or getpass.getuser()


def _number_list(text: str | None, option: str, kind: type) -> list[Any] | None:
    if text is None:
        return None
    try:
        return [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        _fail(f"{option} {text!r}: a comma-separated list of numbers, e.g. 1,10,50,100", 2)


def _tags(values: list[str] | None) -> dict[str, str]:
    tags = {}
    for value in values or []:
        key, sep, tag = value.partition("=")
        if not sep or not key:
            _fail(f"--tag {value!r}: write KEY=VALUE", 2)
        tags[key] = tag
    return tags


def _releases() -> Any:
    from hub import cli as hub_cli
    from hub.rollouts.releases import repository_check

    return repository_check(hub_cli._open(None, None))


@app.command("create")
def create(
    model: Annotated[str, typer.Option(help="the model")],
    version: Annotated[str, typer.Option(help="the release (listed, not revoked)")],
    group: Annotated[str | None, typer.Option(help="target: this group's devices")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="target: devices with KEY=VALUE")] = None,
    device: Annotated[list[str] | None, typer.Option(help="target: this device")] = None,
    waves: Annotated[
        str | None, typer.Option(help="cumulative percent per wave (default 1,10,50,100)")
    ] = None,
    counts: Annotated[str | None, typer.Option(help="devices per wave, e.g. 5,45")] = None,
    spec_file: Annotated[
        Path | None, typer.Option("--spec", help="the whole spec as JSON (the API's body)")
    ] = None,
    soak: Annotated[int, typer.Option(help="soak seconds per wave")] = 600,
    device_timeout: Annotated[int, typer.Option(help="seconds a device has to report")] = 86400,
    min_success: Annotated[float, typer.Option(help="install gate, ratio")] = 0.9,
    max_failure_ratio: Annotated[float, typer.Option(help="install gate, ratio")] = 0.1,
    max_failures: Annotated[int | None, typer.Option(help="install gate, count")] = None,
    max_timed_out: Annotated[float, typer.Option(help="timed-out ratio at most")] = 1.0,
    min_reported: Annotated[int, typer.Option(help="devices with a result, at least")] = 1,
    max_error_rate_increase: Annotated[float | None, typer.Option(help="health gate")] = None,
    max_ttft_regression: Annotated[float | None, typer.Option(help="health gate, p95")] = None,
    max_per_token_regression: Annotated[float | None, typer.Option(help="health gate")] = None,
    max_tps_drop: Annotated[float | None, typer.Option(help="health gate, ratio")] = None,
    max_crash_increase: Annotated[float | None, typer.Option(help="health gate")] = None,
    approval: Annotated[bool, typer.Option(help="each wave needs a second operator")] = False,
    on_failure: Annotated[str, typer.Option(help="pause or rollback")] = "pause",
    rate: Annotated[int, typer.Option(help="devices notified per minute")] = 1000,
    increment: Annotated[float, typer.Option(help="rate factor per minute")] = 1.0,
    window_cron: Annotated[str | None, typer.Option(help="activation window start")] = None,
    window_minutes: Annotated[int, typer.Option(help="activation window length")] = 60,
    window_tz: Annotated[str, typer.Option(help="activation window time zone")] = "UTC",
    seed: Annotated[int | None, typer.Option(help="the draw's seed (default: random)")] = None,
    operator: OperatorOption = None,
) -> None:
    """Create a rollout; the running hub opens its first wave."""
    from hub import cli as hub_cli
    from hub.rollouts import store
    from hub.rollouts.spec import RolloutSpec, ValidationError, field_errors

    if spec_file is not None:
        try:
            data = json.loads(spec_file.read_text())
        except (OSError, ValueError) as exc:
            _fail(f"--spec {spec_file}: {exc}", 2)
    else:
        data = {
            "model": model,
            "version": version,
            "target": {"group": group, "tags": _tags(tag), "devices": device or []},
            "wave_percent": _number_list(waves, "--waves", float),
            "wave_counts": _number_list(counts, "--counts", int),
            "soak_seconds": soak,
            "device_timeout_seconds": device_timeout,
            "install": {
                "min_success_ratio": min_success,
                "max_failure_ratio": max_failure_ratio,
                "max_failures": max_failures,
                "max_timed_out_ratio": max_timed_out,
                "min_reported": min_reported,
            },
            "health": {
                "max_error_rate_increase": max_error_rate_increase,
                "max_ttft_p95_regression": max_ttft_regression,
                "max_per_token_p95_regression": max_per_token_regression,
                "max_tokens_per_second_drop": max_tps_drop,
                "max_crash_rate_increase": max_crash_increase,
            },
            "approval_required": approval,
            "on_failure": on_failure,
            "pacing": {"per_minute": rate, "increment_factor": increment},
            "seed": seed,
        }
        if waves is None and counts is None:
            data["wave_percent"] = [1, 10, 50, 100]
        if window_cron is not None:
            data["window"] = {
                "cron": window_cron,
                "duration_minutes": window_minutes,
                "timezone": window_tz,
            }
    try:
        spec = RolloutSpec.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{e['field']}: {e['message']}" for e in field_errors(exc))
        _fail(f"the rollout is not valid: {problems}", 2)
    releases = _releases()
    try:
        with hub_cli._database() as engine:
            rollout = store.create(engine, spec, _operator(operator), releases)
    except store.RolloutRefused as exc:
        _fail(f"{exc.field}: {exc}", 2)
    typer.echo(f"created rollout {rollout.id}: {spec.model} {spec.version}")


@app.command("list")
def list_rollouts(
    active: Annotated[bool, typer.Option(help="only those not finished")] = False,
) -> None:
    """Every rollout with its state."""
    from rich.console import Console
    from rich.table import Table

    from hub import cli as hub_cli
    from hub.rollouts import store

    with hub_cli._database() as engine:
        rollouts = store.list_rollouts(engine, active_only=active)
    if not rollouts:
        typer.echo("no rollouts")
        return
    table = Table("id", "release", "state", "wave", "created by", "waiting for")
    for r in rollouts:
        table.add_row(
            str(r.id), f"{r.model} {r.version}", r.state, str(r.wave + 1), r.created_by,
            r.waiting_for or "",
        )  # fmt: skip
    Console(width=140).print(table)


@app.command("status")
def status(
    rollout_id: IdArgument,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of bars")] = False,
) -> None:
    """Progress per wave, gate values against thresholds, and why it is waiting."""
    from hub import cli as hub_cli
    from hub.rollouts import status as rollout_status
    from hub.rollouts import store

    try:
        with hub_cli._database() as engine:
            shown = rollout_status.describe(engine, rollout_id)
    except store.NoRollout as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps(shown, indent=2))
        return
    _print_status(shown)


def _print_status(shown: dict[str, Any]) -> None:
    from rich.console import Console, Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table

    console = Console(width=120)
    console.print(
        f"rollout {shown['id']}: {shown['model']} {shown['version']} (replaces "
        f"{shown['baseline_version'] or '-'}), [bold]{shown['state']}[/bold], wave "
        f"{shown['wave'] + 1} of {len(shown['waves'])}, by {shown['created_by']}"
    )
    if shown["waiting_for"]:
        console.print(f"  waiting for: {shown['waiting_for']}")
    if shown.get("window"):
        window = shown["window"]
        console.print(
            f"  window {window['cron']} ({window['timezone']}, {window['duration_minutes']} "
            f"min): devices activate next at {window['next_open']}"
        )
    waves = Table("wave", "progress", "size", "ok", "failed", "timed out", "pending", "state")
    gates = Table("wave", "gate", "value", "threshold", "verdict", "what")
    for wave in shown["waves"]:
        size = max(wave["size"], 1)
        bar = Group(ProgressBar(total=size, completed=wave["succeeded"], width=30))
        state = "passed" if wave["passed_at"] else "open" if wave["opened_at"] else "waiting"
        waves.add_row(
            str(wave["number"] + 1), bar, str(wave["size"]), str(wave["succeeded"]),
            str(wave["failed"]), str(wave["timed_out"]), str(wave["pending"]), state,
        )  # fmt: skip
        for gate in wave["gates"]:
            gates.add_row(
                str(wave["number"] + 1), gate["gate"], _shown(gate["value"]),
                _shown(gate["threshold"]), gate["verdict"], gate["detail"],
            )  # fmt: skip
    console.print(waves)
    if gates.row_count:
        console.print(gates)
    current = shown["waves"][shown["wave"]]
    if current["timed_out_devices"]:
        console.print("  timed out: " + ", ".join(current["timed_out_devices"]))


def _shown(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _act(name: str, call: Any) -> None:
    from hub import cli as hub_cli
    from hub.rollouts import actions, store
    from hub.rollouts.machine import IllegalTransition

    try:
        with hub_cli._database() as engine:
            state = call(engine)
    except (store.NoRollout, actions.ActionRefused, IllegalTransition) as exc:
        _fail(str(exc))
    typer.echo(f"{name}: the rollout is {state}")


@app.command("approve")
def approve(
    rollout_id: IdArgument, operator: OperatorOption = None, reason: ReasonOption = None
) -> None:
    """Approve the next wave (a second operator: not the rollout's creator)."""
    from hub.rollouts import actions

    _act("approved", lambda e: actions.approve(e, rollout_id, _operator(operator), reason))


@app.command("pause")
def pause(
    rollout_id: IdArgument, reason: ReasonOption = None, operator: OperatorOption = None
) -> None:
    """Stop notifying and gating until resumed (a reason is required)."""
    from hub.rollouts import actions

    _act("paused", lambda e: actions.pause(e, rollout_id, _operator(operator), reason))


@app.command("resume")
def resume(
    rollout_id: IdArgument,
    reason: ReasonOption = None,
    operator: OperatorOption = None,
    override: Annotated[
        bool, typer.Option(help="let the current wave pass its gates (needs a reason)")
    ] = False,
) -> None:
    """Go on: the current wave's gates are evaluated again (or overridden)."""
    from hub.rollouts import actions

    _act(
        "resumed",
        lambda e: actions.resume(e, rollout_id, _operator(operator), reason, override=override),
    )


@app.command("abort")
def abort(
    rollout_id: IdArgument, reason: ReasonOption = None, operator: OperatorOption = None
) -> None:
    """Stop for good; notified devices keep the new release (a reason is required)."""
    from hub.rollouts import actions

    _act("aborted", lambda e: actions.abort(e, rollout_id, _operator(operator), reason))


@app.command("rollback")
def rollback(
    rollout_id: IdArgument, reason: ReasonOption = None, operator: OperatorOption = None
) -> None:
    """Every notified device back to its previous release (a reason is required)."""
    from hub import cli as hub_cli
    from hub.fleet.authority import FleetAuthority
    from hub.rollouts import actions

    key = FleetAuthority(hub_cli.program.config).director.private_key
    releases = _releases()
    _act(
        "rolled back",
        lambda e: actions.rollback(e, rollout_id, _operator(operator), reason, key, releases),
    )


@app.command("token")
def token(
    name: Annotated[str, typer.Argument(help="the operator's name")],
    role: Annotated[str, typer.Option(help="viewer, operator, approver or admin")] = "operator",
) -> None:
    """Issue an API token for an operator (replacing theirs); shown once."""
    from hub import cli as hub_cli
    from hub.rollouts.auth import OperatorTokens, Role

    try:
        chosen = Role(role)
    except ValueError:
        _fail(f"--role {role!r}: choose viewer, operator, approver or admin", 2)
    tokens = OperatorTokens(hub_cli.program.config.api.operator_tokens_file.expanduser())
    typer.echo(f"API token for {name} ({chosen}), shown only now:", err=True)
    typer.echo(tokens.issue(name, chosen))

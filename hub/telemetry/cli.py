"""`edge-hub telemetry ...`: release health from anonymous telemetry, over at least k devices.

Registered on the hub's app in hub/cli.py; the database and the config come from there
(imported when a command runs: hub/cli.py imports this module).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from hub.telemetry.query import HealthCell

app = typer.Typer(
    help="Anonymous usage telemetry: aggregates over at least k devices.", no_args_is_help=True
)

_AGE = re.compile(r"([0-9]+)([hdw])")
_AGE_UNITS = {"h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, now: datetime) -> datetime:
    """An age before `now` (36h, 7d, 2w) or an ISO date or time (UTC unless it says)."""
    age = _AGE.fullmatch(text.strip())
    if age is not None:
        return now - timedelta(**{_AGE_UNITS[age[2]]: int(age[1])})
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is neither an age (36h, 7d, 2w) nor an ISO date or time "
            "(2030-01-31, 2030-01-31T12:00Z)",
            param_hint="--since",
        ) from None
    return moment.replace(tzinfo=UTC) if moment.utcoffset() is None else moment.astimezone(UTC)


@app.command("report")
def report(
    model: Annotated[str, typer.Option("--model", help="the model, e.g. contracts-small")],
    version: Annotated[
        str | None, typer.Option("--version", help="one release (default: each of them)")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(help="from this cell on: an age (36h, 7d) or an ISO date/time (UTC)"),
    ] = None,
    bucket: Annotated[str, typer.Option(help="cell size: hour or day")] = "hour",
    k: Annotated[
        int | None,
        typer.Option(
            "--k",
            help="hide cells behind fewer devices (default and minimum: the config's "
            "telemetry.k_anonymity)",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table")] = False,
) -> None:
    """Error rate, latency percentiles, tokens/s and crash rate per release and time cell."""
    from hub import cli as hub_cli
    from hub.telemetry.query import TelemetryQueryError, release_health

    configured = hub_cli.program.config.telemetry.k_anonymity
    if k is not None and k < configured:
        hub_cli.fail(
            f"--k {k} is below the hub's k_anonymity of {configured}: lower "
            "[telemetry] k_anonymity in the hub config to show smaller groups"
        )
    start = None if since is None else parse_since(since, datetime.now(UTC))
    try:
        with hub_cli._database() as engine:
            cells = release_health(
                engine, model, version, since=start, bucket=bucket, k=configured if k is None else k
            )
    except TelemetryQueryError as exc:
        hub_cli.fail(str(exc))
    if as_json:
        typer.echo(json.dumps([cell.to_json() for cell in cells], indent=2))
    elif not cells:
        release = model if version is None else f"{model} {version}"
        typer.echo(f"no telemetry for {release}" + ("" if since is None else f" since {start}"))
    else:
        _table(cells)


@app.command("rollup")
def rollup_command() -> None:
    """Roll closed days up into the daily summary now (`edge-hub serve` does it hourly):
    for a hub database filled while no hub served it. Safe to repeat."""
    from hub import cli as hub_cli
    from hub.telemetry import rollup

    with hub_cli._database() as engine:
        days = rollup.roll_up(engine, datetime.now(UTC))
    typer.echo(f"rolled up {len(days)} day(s) of telemetry" if days else "the summary is fresh")


def _number(value: float | None, scale: float = 1.0, digits: int = 0) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def _table(cells: list[HealthCell]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        "version", "cell (UTC)", "devices", "requests", "errors", "rejected (queue full)",
        "TTFT p50/p90/p99 ms", "token p50 ms", "tokens/s", "crashes/device-h", "updates ok/failed",
        caption=f"cells behind fewer than {cells[0].k} devices are suppressed",
    )  # fmt: skip
    for cell in cells:
        when = cell.start.strftime("%Y-%m-%d %H:%M" if cell.bucket == "hour" else "%Y-%m-%d")
        m = cell.metrics
        if m is None:
            table.add_row(cell.version, when, f"< {cell.k}", "suppressed", *["-"] * 7)
            continue
        ttft = "/".join(_number(v, 1000) for v in (m.ttft.p50, m.ttft.p90, m.ttft.p99))
        outcomes = m.update_outcomes
        table.add_row(
            cell.version,
            when,
            str(m.devices),
            str(m.requests),
            f"{m.errors} ({_number(m.error_rate, 100, 1)}%)",
            str(m.rejections),
            ttft,
            _number(m.per_token.p50, 1000, 1),
            _number(m.tokens_per_second, digits=1),
            _number(m.crashes_per_device_hour, digits=3),
            f"{outcomes['succeeded']}/{outcomes['failed'] + outcomes['rolled_back']}",
        )
    Console(width=180).print(table)

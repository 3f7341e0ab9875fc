"""`edge-provision`: key ceremony, enrollment and USB bundles (commands arrive with them)."""

from __future__ import annotations

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


def main() -> None:
    app()

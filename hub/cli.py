"""`edge-hub`: the fleet hub's command line."""

from __future__ import annotations

from typing import Annotated

import typer

from edge_agent import __version__

app = typer.Typer(
    help="The fleet hub: model registry, rollouts, telemetry.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
testmodel = typer.Typer(
    help="Random-weight test models (no downloads needed).", no_args_is_help=True
)
app.add_typer(testmodel, name="testmodel")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"edge-hub {__version__}")
        raise typer.Exit


@app.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version")
    ] = False,
) -> None:
    pass


@testmodel.command("build")
def testmodel_build(
    shape: Annotated[str, typer.Argument(help="tiny (about 1 MB) or small (SmolLM2-360M shape)")],
    print_path: Annotated[
        bool, typer.Option("--print-path", help="print only the model folder on stdout")
    ] = False,
) -> None:
    """Build (or reuse from the cache) a test model and print its folder."""
    from rich.console import Console

    from hub.registry import synthetic

    if shape not in synthetic.RECIPES:
        typer.echo(
            f"edge-hub: error: unknown shape '{shape}': choose {', '.join(synthetic.RECIPES)}",
            err=True,
        )
        raise typer.Exit(2)
    recipe = synthetic.RECIPES[shape]
    console = Console(stderr=True)
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


def main() -> None:
    app()

"""What every command line of the project shares: --config, --verbose, --version, and
one way to fail (a message that says what is wrong, and an exit status).

No `from __future__ import annotations` here: typer reads the options from the
callback's annotations, and the --version option is built per program at run time.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Generic, NoReturn, TypeVar

import typer

from edge_agent import __version__, logs
from edge_agent.tomlconfig import ConfigError

Config = TypeVar("Config")

ConfigOption = Annotated[
    Path | None, typer.Option("--config", help="TOML config file", show_default=False)
]
VerboseOption = Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")]


class Program(Generic[Config]):
    def __init__(self, name: str, help: str, load: Callable[[Path | None], Config]) -> None:
        self.name = name
        self._load = load
        self._config: Config | None = None
        self.app = typer.Typer(
            help=help, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False
        )

        def show_version(value: bool) -> None:
            if value:
                typer.echo(f"{name} {__version__}")
                raise typer.Exit

        VersionOption = Annotated[
            bool,
            typer.Option(
                "--version", callback=show_version, is_eager=True, help="print the version"
            ),
        ]

        @self.app.callback()
        def main_options(
            config: ConfigOption = None,
            verbose: VerboseOption = False,
            version: VersionOption = False,
        ) -> None:
            logs.configure(verbose)
            try:
                self._config = self._load(config)
            except ConfigError as exc:
                self.fail(str(exc), 2)

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = self._load(None)
        return self._config

    def fail(self, message: str, code: int = 1) -> NoReturn:
        typer.echo(f"{self.name}: error: {message}", err=True)
        raise typer.Exit(code)


def serve_http(
    application: Any, host: str, port: int, *, tls: tuple[Path, Path] | None = None
) -> None:
    """Run uvicorn in the foreground until SIGINT or SIGTERM, then return normally.

    uvicorn re-raises the signal it caught once it has shut down; with the default SIGTERM
    action that kills the process before the caller's `finally` blocks run (the broker
    child, the outbox, the telemetry window). A SIGTERM handler that exits instead lets
    them run. `tls`: (certificate, key) files to serve HTTPS.
    """
    import signal
    import sys

    import uvicorn

    def _exit(_signum: int, _frame: object) -> None:
        sys.exit(0)

    previous = signal.signal(signal.SIGTERM, _exit)
    try:
        certfile, keyfile = tls if tls is not None else (None, None)
        uvicorn.run(
            application,
            host=host,
            port=port,
            log_level="warning",
            ssl_certfile=certfile,
            ssl_keyfile=keyfile,
        )
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)

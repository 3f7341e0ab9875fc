"""What every command line of the project shares: --config, --verbose, --version, and
one way to fail (a message that says what is wrong, and an exit status).

No `from __future__ import annotations` here: typer reads the options from the
callback's annotations, and the --version option is built per program at run time.
"""

import errno
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Generic, NoReturn, TypeVar

import typer

from edge_agent import __version__, help_text, logs
from edge_agent.tomlconfig import ConfigError

Config = TypeVar("Config")

ConfigOption = Annotated[
    Path | None, typer.Option("--config", help="TOML config file", show_default=False)
]
VerboseOption = Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")]


class Program(Generic[Config]):
    def __init__(self, name: str, help: str, load: Callable[[Path | None], Config]) -> None:
        help_text.apply()
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


class ListenError(Exception):
    """The address or port cannot be listened on; the message says what to do instead."""


def listen(host: str, port: int) -> socket.socket:
    """Bind and listen now: a taken port is said before any slow work, and the real port
    of `--port 0` is known (the kernel picks it here)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise ListenError(
            f"cannot listen on {host!r}: {exc.strerror}; use an address of this machine"
        ) from exc
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ListenError(_listen_failure(host, port, exc)) from exc
    return sock


def _listen_failure(host: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (
            f"port {port} on {host} is already in use by another program: stop it "
            f"(`ss -ltnp 'sport = :{port}'` names it) or choose another port with --port "
            "(0 picks a free one)"
        )
    if exc.errno == errno.EACCES:
        return (
            f"no permission to listen on port {port}: ports below 1024 need root; use --port 8080"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return (
            f"{host} is not an address of this machine; use 127.0.0.1 or one of its own addresses"
        )
    return f"cannot listen on {host}:{port}: {exc.strerror}"


def url_of(sock: socket.socket, scheme: str = "http") -> str:
    """The URL a client on this machine uses for a listening socket (its real port)."""
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}"


def _closing_when(draining: Any, application: Any) -> Any:
    """The ASGI application, with `Connection: close` on responses once `draining` is set."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await application(scope, receive, send)
            return

        async def closing_send(message: Any) -> None:
            if message["type"] == "http.response.start" and draining.is_set():
                headers = [h for h in message.get("headers", []) if h[0].lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await application(scope, receive, closing_send)

    return app


def serve_http(
    application: Any,
    host: str,
    port: int,
    *,
    tls: tuple[Path, Path] | None = None,
    sock: socket.socket | None = None,
    on_listening: Callable[[], None] | None = None,
    linger_seconds: float = 0.0,
) -> None:
    """Run uvicorn in the foreground until SIGINT or SIGTERM, then return normally.

    uvicorn re-raises the signal it caught once it has shut down; with the default SIGTERM
    action that kills the process before the caller's `finally` blocks run (the broker
    child, the outbox, the telemetry window). A SIGTERM handler that exits instead lets
    them run. `tls`: (certificate, key) files to serve HTTPS. `sock`: a socket from
    `listen()` (else one is bound here, raising ListenError); `on_listening` runs once the
    server accepts requests, so what it prints is true.

    `linger_seconds`: on SIGTERM, first serve that long with `Connection: close` on every
    response, so clients stop reusing their keep-alive connections, then shut down. Where
    another process serves the same socket (the launcher's hand-over) a connection closed
    under a client that had just sent its next request would otherwise be a failed request.
    """
    import asyncio
    import signal
    import sys
    import threading

    import uvicorn

    draining = threading.Event()

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            self._loop = asyncio.get_running_loop()
            if self.started and on_listening is not None:
                on_listening()

        def handle_exit(self, sig: int, frame: Any) -> None:
            """uvicorn's own SIGTERM handler while it serves. With a linger: accept nothing
            more (the other process takes new connections), answer what is open with
            Connection: close, and only then shut down as usual."""
            if linger_seconds <= 0 or sig != signal.SIGTERM or draining.is_set():
                super().handle_exit(sig, frame)
                return
            draining.set()
            self._loop.call_soon_threadsafe(self._stop_accepting)
            threading.Timer(linger_seconds, setattr, (self, "should_exit", True)).start()

        def _stop_accepting(self) -> None:
            for listener in self.servers:
                listener.close()  # this process accepts no more; its connections go on

    def _exit(_signum: int, _frame: object) -> None:
        sys.exit(0)

    if linger_seconds > 0:
        application = _closing_when(draining, application)

    bound = sock if sock is not None else listen(host, port)
    previous = signal.signal(signal.SIGTERM, _exit)
    try:
        certfile, keyfile = tls if tls is not None else (None, None)
        config = uvicorn.Config(
            application,
            host=host,
            port=port,
            log_level="warning",
            ssl_certfile=certfile,
            ssl_keyfile=keyfile,
        )
        server = Server(config)
        server.run(sockets=[bound])
        if not server.started:
            raise SystemExit(3)  # as uvicorn.run: the application failed to start
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        bound.close()

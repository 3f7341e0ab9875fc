"""A broker the hub runs as its child process: a data folder, the hub's device CA for
TLS, a log to tell readiness and failure from, and start / stop / kill / restart as a
service manager would. Mosquitto (hub.broker.mosquitto) is the one broker.

Subclasses say how to prepare their files, the command line, how to reload, how a new
group membership reaches the broker, and how a revoked device is cut off.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self

from edge_agent.atomic import make_dirs
from edge_agent.protocol.topics import HUB_CLIENTS, HUB_USERNAME
from hub.broker.process import BrokerProcess, ProcessExited
from hub.fleet.identity import DeviceCA, TlsFiles

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 10.0


class BrokerError(RuntimeError):
    pass


class BrokerMissing(BrokerError):
    pass


class ChildBroker(ABC):
    name: ClassVar[str]
    """The broker's name in logs and files, e.g. "mosquitto"."""
    description: ClassVar[str]
    """What the operator is told runs, e.g. "managed Mosquitto"."""

    def __init__(
        self,
        data_dir: Path,
        ca: DeviceCA,
        *,
        host: str = "127.0.0.1",
        port: int = 8883,
    ) -> None:
        self.data_dir = data_dir
        self.ca = ca
        self.host = host
        self.port = port
        self._process = BrokerProcess()

    @property
    def log_path(self) -> Path:
        return self.data_dir / f"{self.name}.log"

    @property
    def output_path(self) -> Path:
        """What the process itself prints (before its log is open, or when it crashes)."""
        return self.data_dir / f"{self.name}.out"

    @property
    def running(self) -> bool:
        return self._process.running

    def hub_client_files(self, name: str = HUB_USERNAME) -> TlsFiles:
        """The CA, certificate and key a hub client connects with; the certificate's CN
        `name` (one of HUB_CLIENTS) is also its client id and its ACL user."""
        return self.ca.hub_client_files(name)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @abstractmethod
    def _prepare(self) -> None:
        """Write what the broker reads at start (config, ACL)."""

    @abstractmethod
    def _argv(self) -> list[str]:
        """The command that runs the broker in the foreground."""

    @abstractmethod
    def set_device_groups(self, device_groups: Mapping[str, Iterable[str]]) -> None:
        """New group membership: carry it to the broker's access rules."""

    @abstractmethod
    def cut_off_revoked(self) -> None:
        """Make the broker refuse revoked certificates, open connections included."""

    def start(self) -> None:
        """Prepare and start the broker; return once it accepts connections. BrokerError
        (with the end of its log) if it exits or never listens."""
        if self.running:
            raise BrokerError("the broker is already running")
        make_dirs(self.data_dir)
        self.data_dir.chmod(0o700)
        for name in HUB_CLIENTS:
            self.hub_client_files(name)
        self._prepare()
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._process.spawn(self._argv(), self.output_path)
        try:
            listening = self._process.wait_listening(
                self.host, self.port, READY_TIMEOUT_S, lambda: self._says_running(log_offset)
            )
        except ProcessExited as exited:
            raise BrokerError(f"{self.name} {exited}: {self._tail()}") from None
        if not listening:
            raise BrokerError(f"{self.name} did not listen in {READY_TIMEOUT_S} s: {self._tail()}")
        log.info("%s listening on %s:%s", self.name, self.host, self.port)

    def _says_running(self, offset: int) -> bool:
        try:
            with self.log_path.open("rb") as handle:
                handle.seek(offset)
                return b" running" in handle.read()
        except FileNotFoundError:
            return False

    def _tail(self) -> str:
        out = self.output_path
        text = self.log() + (out.read_text(errors="replace") if out.exists() else "")
        return f"{self.host}:{self.port}, log:\n{text[-2000:]}"

    def reload(self) -> None:
        """SIGHUP: the broker rereads its TLS files (the CRL among them)."""
        if not self._process.send_hangup():
            raise BrokerError("the broker is not running")

    def revoke(self, device_id: str) -> int:
        """Revoke the device's certificates (CRL rewritten atomically) and cut it off.
        Returns how many certificates were newly revoked."""
        count = self.ca.revoke(device_id)
        if self.running:
            self.cut_off_revoked()
        return count

    def stop(self) -> None:
        """SIGTERM: the broker ends as under a service manager."""
        self._process.stop()

    def kill(self) -> None:
        self._process.kill()

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

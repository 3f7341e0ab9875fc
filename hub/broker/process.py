"""A broker child process: spawn, signal, stop as a service manager would, or kill.

Shared by the hub's managed Mosquitto and the tests' private Mosquitto, so both stop,
crash and restart a broker the same way.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

STOP_TIMEOUT_S = 10.0


class ProcessExited(RuntimeError):
    def __init__(self, code: int) -> None:
        super().__init__(f"exited with {code}")
        self.code = code


class BrokerProcess:
    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def spawn(self, argv: list[str], output_path: Path) -> None:
        with output_path.open("ab") as out:
            self._process = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def wait_listening(
        self, host: str, port: int, timeout_s: float, says_running: Callable[[], bool]
    ) -> bool:
        """Wait until the broker says it runs (so it bound the port, rather than someone
        else holding it) and accepts a connection. False after `timeout_s` (the process is
        then killed); ProcessExited if it ends first."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            code = self.exit_code()
            if code is not None:
                raise ProcessExited(code)
            if says_running():
                try:
                    with socket.create_connection((host, port), timeout=0.5):
                        return True
                except OSError:
                    pass
            time.sleep(0.005)
        self.kill()
        return False

    def exit_code(self) -> int | None:
        """The exit status once the process has ended (it is then forgotten), else None."""
        if self._process is None or self._process.poll() is None:
            return None
        code = self._process.returncode
        self._process = None
        return code

    def send_hangup(self) -> bool:
        """SIGHUP (reload) to the running broker; False when none runs."""
        if not self.running:
            return False
        assert self._process is not None
        self._process.send_signal(signal.SIGHUP)
        return True

    def stop(self) -> None:
        """SIGTERM: the broker saves what it keeps and exits."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def kill(self) -> None:
        """A crash: SIGKILL, so only what the broker had already saved survives."""
        if self._process is None:
            return
        self._process.kill()
        self._process.wait()
        self._process = None

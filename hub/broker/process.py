"""A Mosquitto child process: spawn, signal, stop as a service manager would, or kill.

Shared by the hub's managed broker and the tests' private broker, so both stop, crash
and restart a broker the same way.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

STOP_TIMEOUT_S = 10.0


class BrokerProcess:
    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def spawn(self, binary: Path, config_path: Path, output_path: Path) -> None:
        with output_path.open("ab") as out:
            self._process = subprocess.Popen(
                [str(binary), "-c", str(config_path)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def exit_code(self) -> int | None:
        """The exit status once the process has ended (it is then forgotten), else None."""
        if self._process is None or self._process.poll() is None:
            return None
        code = self._process.returncode
        self._process = None
        return code

    def send(self, signum: signal.Signals) -> bool:
        """Signal the running broker; False when none runs."""
        if not self.running:
            return False
        assert self._process is not None
        self._process.send_signal(signum)
        return True

    def stop(self) -> None:
        """SIGTERM: Mosquitto saves its state and exits."""
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

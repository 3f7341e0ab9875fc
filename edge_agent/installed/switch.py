"""The running agent's side of an A/B switch: once a new slot is marked for trial, stop
taking requests, let those in flight finish (uvicorn's graceful shutdown on SIGTERM), and
exit with RESTART_EXIT so the launcher starts the new slot."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path

from edge_agent.installed.launcher import (
    ROOT_ENV,
    SLOT_ENV,
    LauncherError,
    load_state,
)

log = logging.getLogger(__name__)


def launched_slot() -> tuple[Path, str] | None:
    """(install root, slot) when the launcher started this process, else None."""
    root, slot = os.environ.get(ROOT_ENV), os.environ.get(SLOT_ENV)
    return (Path(root), slot) if root and slot else None


class SwitchWatcher:
    def __init__(self, root: Path, slot: str, interval: float = 1.0) -> None:
        self._root = root
        self._slot = slot
        self._interval = interval
        self._stop = threading.Event()
        self.requested = threading.Event()
        self._thread = threading.Thread(target=self._run, name="switch-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self._interval + 5)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                trial = load_state(self._root).trial
            except LauncherError as exc:
                log.warning("%s", exc)
                continue
            if trial is not None and trial != self._slot:
                log.warning("switching to slot %s: draining the API first", trial)
                self.requested.set()
                os.kill(os.getpid(), signal.SIGTERM)  # uvicorn drains, then serve returns
                return

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
from edge_agent.installed.periodic import Periodic

log = logging.getLogger(__name__)


def launched_slot() -> tuple[Path, str] | None:
    """(install root, slot) when the launcher started this process, else None."""
    root, slot = os.environ.get(ROOT_ENV), os.environ.get(SLOT_ENV)
    return (Path(root), slot) if root and slot else None


class SwitchWatcher(Periodic):
    def __init__(self, root: Path, slot: str, interval: float = 1.0) -> None:
        super().__init__(interval, "switch-watcher")
        self._root = root
        self._slot = slot
        self.requested = threading.Event()

    def _tick(self) -> bool:
        try:
            trial = load_state(self._root).trial
        except LauncherError as exc:
            log.warning("%s", exc)
            return True
        if trial is not None and trial != self._slot:
            log.warning("switching to slot %s: draining the API first", trial)
            self.requested.set()
            os.kill(os.getpid(), signal.SIGTERM)  # uvicorn drains, then serve returns
            return False
        return True

"""Crash detection: a marker file written at start and removed at a clean stop.

Finding the marker at start means the previous run ended without a clean stop (a crash, a
kill -9, a power cut). Only that bit is kept: no time, exit code or reason.
"""

from __future__ import annotations

import os
from pathlib import Path

from edge_agent.atomic import write_atomic


class RunMarker:
    def __init__(self, path: Path) -> None:
        self.path = path

    def start(self) -> bool:
        """Mark this run as started; True when the previous run had not stopped cleanly."""
        crashed = self.path.exists()
        write_atomic(self.path, str(os.getpid()).encode(), mode=0o600)
        return crashed

    def stop(self) -> None:
        """Mark a clean stop."""
        self.path.unlink(missing_ok=True)

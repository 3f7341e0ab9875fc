"""One log format for every program of the project: time, level, where, what.

In a terminal, log lines and progress displays share one rich console: a log line is
printed above a live progress bar or spinner instead of into it. Elsewhere (a pipe, a
file, the journal) lines stay plain text in FORMAT.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Libraries that log every request, job run or migration step at INFO: their warnings and
# errors still show, their chatter only with --verbose.
CHATTY = ("httpx", "apscheduler", "alembic")

_console: Console | None = None


def console() -> Console:
    """The console every progress display and the log handler write to (standard error)."""
    global _console
    if _console is None:
        from rich.console import Console

        _console = Console(stderr=True, highlight=False, soft_wrap=True, log_path=False)
    return _console


def configure(verbose: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler = RichHandler(
            console=console(), show_path=False, markup=False, log_time_format="%H:%M:%S"
        )
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        logging.basicConfig(level=level, handlers=[handler])
    else:
        logging.basicConfig(level=level, format=FORMAT)
    if not verbose:
        for name in CHATTY:
            logging.getLogger(name).setLevel(logging.WARNING)

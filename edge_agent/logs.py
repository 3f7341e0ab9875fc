"""One log format for every program of the project: time, level, where, what."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Libraries that log every request, job run or migration step at INFO: their warnings and
# errors still show, their chatter only with --verbose.
CHATTY = ("httpx", "apscheduler", "alembic")


def configure(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=FORMAT)
    if not verbose:
        for name in CHATTY:
            logging.getLogger(name).setLevel(logging.WARNING)

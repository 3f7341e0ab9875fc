"""Fault injection for crash-safety tests: a real SIGKILL at a named point.

`EDGE_AGENT_FAULT=NAME:N` kills this process the Nth time execution passes the
checkpoint NAME (N defaults to 1). `EDGE_AGENT_FAULT=count` with
`EDGE_AGENT_FAULT_LOG=PATH` instead records how often each checkpoint was passed, so a
test can enumerate every point of a run. Unset, a checkpoint is one comparison.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
from pathlib import Path

ENV = "EDGE_AGENT_FAULT"
LOG_ENV = "EDGE_AGENT_FAULT_LOG"

_mode = os.environ.get(ENV, "")
_hits: dict[str, int] = {}
_target: tuple[str, int] | None = None
if _mode and _mode != "count":
    _name, _, _count = _mode.partition(":")
    _target = (_name, int(_count or "1"))


def checkpoint(name: str) -> None:
    if not _mode:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _target is not None and _target == (name, _hits[name]):
        os.kill(os.getpid(), signal.SIGKILL)


def _write_counts() -> None:
    log = os.environ.get(LOG_ENV)
    if log:
        Path(log).write_text(json.dumps(_hits))


if _mode == "count":
    atexit.register(_write_counts)

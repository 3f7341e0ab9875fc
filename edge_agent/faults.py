"""Fault injection for crash-safety tests: a real SIGKILL at a named point.

`EDGE_AGENT_FAULT=NAME:N` kills this process the Nth time execution passes the
checkpoint NAME (N defaults to 1). Unset, a checkpoint is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "EDGE_AGENT_FAULT"


def _parse(value: str) -> tuple[str, int]:
    name, _, count = value.partition(":")
    return name, int(count or "1")


_TARGET = _parse(os.environ[ENV]) if os.environ.get(ENV) else None
_hits: dict[str, int] = {}


def checkpoint(name: str) -> None:
    if _TARGET is None or _TARGET[0] != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == _TARGET[1]:
        os.kill(os.getpid(), signal.SIGKILL)

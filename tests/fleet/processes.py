"""What the fleet tests share: the project's commands, polling, and the hub's view of a
device."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

from hub import db
from hub.fleet import registry

BIN = Path(sys.executable).parent


def wait_for(check: Callable[[], object], what: str, timeout_s: float = 60.0) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def active_on_hub(database_url: str, device_id: str, model: str = "tiny") -> str | None:
    """The version of `model` the hub's database last heard active on the device."""
    engine = db.make_engine(database_url)
    try:
        details = registry.show_device(engine, device_id)
    except registry.RegistryError:
        return None
    finally:
        engine.dispose()
    states = {m.model: m.active for m in details.models}
    return states.get(model)

"""Package exports loaded on first use (a module `__getattr__`, PEP 562): importing a
package then costs nothing until one of its names is used, so `edge-agent serve` on a
device in no fleet never loads the fleet's heavier libraries."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """The `__getattr__` for `package`: each name in `exports` comes from its module."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(module), name)

    return __getattr__

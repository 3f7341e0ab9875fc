"""onnxruntime-genai must load with ORT_DISABLE_TELEMETRY=1 already in the environment."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

PROBE = textwrap.dedent(
    """
    import importlib.abc, os, sys

    class Watch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "onnxruntime_genai":
                print("at-load", os.environ.get("ORT_DISABLE_TELEMETRY"))
            return None

    sys.meta_path.insert(0, Watch())
    import edge_agent.runtime
    print("loaded", "onnxruntime_genai" in sys.modules)
    """
)


def test_opt_out_is_set_before_the_library_loads() -> None:
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert "at-load 1" in out
    assert "loaded True" in out


def test_every_module_imports_the_library_through_the_guard() -> None:
    from pathlib import Path

    import edge_agent

    root = Path(edge_agent.__file__).parent
    offenders = [
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if p.name != "_og.py" and "import onnxruntime_genai" in p.read_text()
    ]
    assert offenders == []

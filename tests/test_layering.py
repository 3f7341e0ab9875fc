"""The agent stands alone: every edge_agent module imports with the hub's packages absent.

A field device installs `edge-fleet` without extras. The suite's environment has the hub
and dev extras installed, so an agent module that imports one of their packages would pass
every other test here and fail on the device; this test hides those packages. The slow
test in tests/test_field_install.py proves the same on a real install.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions, requires
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = ROOT / "edge_agent" / "protocol"


def _extra_only_imports() -> set[str]:
    """Top-level import names of packages that only the extras (hub, dev) bring in."""
    core: set[str] = set()
    extras: set[str] = set()
    for line in requires("edge-fleet") or []:
        requirement = Requirement(line)
        name = requirement.name.lower().replace("_", "-")
        (extras if requirement.marker is not None else core).add(name)
    only = extras - core - {"edge-fleet"}
    names = {"hub", "provisioning"}
    for module, dists in packages_distributions().items():
        if any(d.lower().replace("_", "-") in only for d in dists):
            names.add(module)
    return names


# Runs in a fresh interpreter: a finder ahead of every other one refuses the blocked names,
# then every module of edge_agent is imported.
_PROBE = """
import importlib, importlib.abc, json, pkgutil, sys
blocked = set(json.loads(sys.argv[1]))

class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            # What Python itself raises for a missing package, which libraries test for.
            raise ModuleNotFoundError(f"{name} is not installed on a field device", name=name)
        return None

sys.meta_path.insert(0, Absent())
import edge_agent
failures = {}
names = ["edge_agent"] + [m.name for m in pkgutil.walk_packages(edge_agent.__path__, "edge_agent.")]
for name in names:
    try:
        importlib.import_module(name)
    except Exception as exc:
        failures[name] = f"{type(exc).__name__}: {exc}"
print(json.dumps({"imported": len(names), "failures": failures}))
"""


def test_the_blocked_names_cover_the_hub_stack() -> None:
    blocked = _extra_only_imports()
    assert {"hub", "provisioning", "torch", "transformers", "pytest"} <= blocked
    assert "apscheduler" not in blocked  # the agent's jobs need it: a core dependency


def test_every_agent_module_imports_without_the_extras() -> None:
    blocked = sorted(_extra_only_imports())
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(blocked)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["failures"] == {}, (
        "these agent modules need a package that only the hub or dev extra installs; "
        "declare it in [project] dependencies or stop importing it: "
        f"{result['failures']}"
    )
    assert result["imported"] > 50


def test_the_protocol_uses_pure_paths_only() -> None:
    """import-linter forbids the I/O modules; pathlib stays for PurePosixPath, so this
    checks that no concrete path class and no open() is used in the protocol."""
    found: list[str] = []
    for source in sorted(PROTOCOL.glob("*.py")):
        tree = ast.parse(source.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "pathlib":
                found += [f"{source.name}: pathlib.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                plain = [a.name for a in node.names if a.name == "pathlib"]
                found += [f"{source.name}: import {name}" for name in plain]
            elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "open":
                found.append(f"{source.name}:{node.lineno}: open()")
    assert all(f.split(".")[-1].startswith("Pure") for f in found if "pathlib." in f), found
    assert not [f for f in found if "open()" in f or "import pathlib" in f], found


def test_the_protocol_contract_names_every_other_agent_module() -> None:
    """import-linter's contract lists the agent's modules one by one: a new one must join."""
    with (ROOT / "pyproject.toml").open("rb") as handle:
        contracts = tomllib.load(handle)["tool"]["importlinter"]["contracts"]
    [contract] = [c for c in contracts if c["name"].startswith("edge_agent.protocol imports")]
    package = ROOT / "edge_agent"
    modules = {p.stem for p in package.glob("*.py") if p.stem != "__init__"}
    packages = {p.parent.name for p in package.glob("*/__init__.py")}
    expected = {f"edge_agent.{name}" for name in modules | packages} - {"edge_agent.protocol"}
    assert set(contract["forbidden_modules"]) == expected

"""`edge-agent doctor`: what runs, from where, and what to do about each problem found."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from edge_agent.config import AgentConfig
from edge_agent.installed.launcher import LauncherError, load_state
from edge_agent.installed.policy import load_policy
from edge_agent.installed.switch import launched_slot
from edge_agent.installed.unit import DEFAULT_ROOT

MIN_FREE_BYTES = 1 << 30  # room for one more model version and an agent slot


@dataclass
class Finding:
    ok: bool
    what: str
    fix: str = ""

    def line(self) -> str:
        mark = "ok  " if self.ok else "FIX "
        return f"{mark}{self.what}" + (f"\n      -> {self.fix}" if self.fix else "")


def examine(config: AgentConfig, install_root: Path | None = None) -> list[Finding]:
    found: list[Finding] = []
    launched = launched_slot()
    root = install_root or (launched[0] if launched else DEFAULT_ROOT)
    found.append(_slots(root))
    found.append(_models(config))
    found.append(_trust(config))
    found.append(_disk(config.data_dir))
    try:
        policy = load_policy(config.data_dir)
        said = f"pinned to {policy.pinned}" if policy.pinned else "follows the fleet"
        if policy.deferred_until:
            said += f", deferred until {policy.deferred_until}"
        found.append(Finding(True, f"self-update: {said}"))
    except ValueError as exc:
        found.append(Finding(False, f"self-update policy: {exc}", "remove the file named"))
    return found


def _slots(root: Path) -> Finding:
    if not (root / "slots.json").exists():
        return Finding(True, f"install: not an installed service ({root} has no slots)")
    try:
        state = load_state(root)
    except LauncherError as exc:
        return Finding(False, f"install: {exc}")
    version = _slot_version(root, state.committed)
    what = f"install: slot {state.committed} ({version}) committed in {root}"
    if state.trial:
        what += f"; slot {state.trial} ({state.trial_version}) on trial"
    result = state.last_result
    if result and not result.get("ok"):
        return Finding(
            False,
            f"{what}; the last self-update to {result.get('version')} failed: "
            f"{result.get('reason')}",
            "the previous agent runs; see `journalctl -u edge-agent` for the failed start",
        )
    return Finding(True, what)


def _slot_version(root: Path, slot: str | None) -> str:
    try:
        return (root / str(slot) / ".edge-agent-version").read_text().strip()
    except OSError:
        return "unknown version"


def _models(config: AgentConfig) -> Finding:
    from edge_agent.store import ModelStore, StoreError

    store = ModelStore(config.data_dir)
    names = store.models()
    if not names:
        return Finding(
            False, "models: none installed", "edge-agent update NAME --from HUB_OR_FOLDER"
        )
    shown = []
    for name in names:
        try:
            active = store.active(name)
        except StoreError as exc:
            return Finding(False, f"model {name}: {exc}", f"edge-agent rollback {name}")
        shown.append(f"{name} {active.version if active else '(none active)'}")
    return Finding(True, "models: " + ", ".join(shown))


def _trust(config: AgentConfig) -> Finding:
    root = config.trust_dir / "root.json"
    if not root.is_file():
        return Finding(
            False,
            "trust: no fleet root pinned, so no update can be verified",
            "edge-agent trust ROOT.json (from the hub), or enroll with edge-agent enroll",
        )
    return Finding(True, f"trust: fleet root pinned in {root}")


def _disk(data_dir: Path) -> Finding:
    probe = data_dir if data_dir.exists() else data_dir.parent
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    what = f"disk: {free / 1e9:.1f} GB free under {probe}"
    if free < MIN_FREE_BYTES:
        return Finding(False, what, "free space there: updates are refused when they do not fit")
    return Finding(True, what)

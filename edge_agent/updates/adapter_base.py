"""An adapter release installs only on its base: refused, before any byte moves, when the
base it names is not the active version of that model here."""

from __future__ import annotations

from edge_agent.protocol import ReleaseManifest
from edge_agent.runtime.adapters import parse_base
from edge_agent.store.store import ModelStore
from edge_agent.updates.errors import Refused

ADAPTER_KIND = "adapter"


def check_adapter_base(store: ModelStore, manifest: ReleaseManifest) -> None:
    """Refuse an adapter release whose base (manifest `base`, NAME@VERSION) is not active."""
    extra = manifest.model_extra or {}
    if extra.get("kind") != ADAPTER_KIND:
        return
    label = f"{manifest.model} {manifest.version}"
    try:
        base_name, base_version = parse_base(str(extra.get("base", "")))
    except ValueError as exc:
        raise Refused(f"{label} is a LoRA adapter that names no usable base: {exc}") from None
    active = store.active(base_name)
    if active is None or active.version != base_version:
        now = (
            f"{base_name} {active.version} is active" if active else f"{base_name} is not installed"
        )
        raise Refused(
            f"{label} is a LoRA adapter for {base_name} {base_version}, and {now} here: "
            f"install {base_name} {base_version} first (edge-agent update {base_name} "
            f"--version {base_version}, or import it from a stick), then this adapter"
        )

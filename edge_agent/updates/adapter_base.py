"""An adapter release installs only on its base: refused, before any byte moves, when the
base it names is no model name and version, is the adapter itself or another adapter, or
is not the active version of that model here."""

from __future__ import annotations

from pydantic import TypeAdapter, ValidationError

from edge_agent.protocol import ReleaseManifest
from edge_agent.protocol.fields import ModelName, ReleaseVersion
from edge_agent.runtime.adapters import parse_base
from edge_agent.store.store import ModelStore
from edge_agent.updates.errors import Refused

ADAPTER_KIND = "adapter"
# The base names a folder under the models directory: it must be a model name, so that
# a signed `../x` or `a/b` never points the store outside it.
_BASE = TypeAdapter(tuple[ModelName, ReleaseVersion])


def check_adapter_base(store: ModelStore, manifest: ReleaseManifest) -> None:
    """Refuse an adapter release whose base (manifest `base`, NAME@VERSION) is not active."""
    extra = manifest.model_extra or {}
    if extra.get("kind") != ADAPTER_KIND:
        return
    label = f"{manifest.model} {manifest.version}"
    try:
        base_name, base_version = _BASE.validate_python(parse_base(str(extra.get("base", ""))))
    except ValidationError as exc:
        why = "; ".join(error["msg"] for error in exc.errors())
        raise Refused(f"{label} is a LoRA adapter that names no usable base: {why}") from None
    except ValueError as exc:
        raise Refused(f"{label} is a LoRA adapter that names no usable base: {exc}") from None
    if base_name == manifest.model:
        raise Refused(f"{label} is a LoRA adapter that names itself as its base")
    active = store.active(base_name)
    if active is not None and (active.manifest.model_extra or {}).get("kind") == ADAPTER_KIND:
        raise Refused(
            f"{label} is a LoRA adapter for {base_name} {active.version}, which is a LoRA "
            f"adapter itself: an adapter runs on a generation model only"
        )
    if active is None or active.version != base_version:
        now = (
            f"{base_name} {active.version} is active" if active else f"{base_name} is not installed"
        )
        raise Refused(
            f"{label} is a LoRA adapter for {base_name} {base_version}, and {now} here: "
            f"install {base_name} {base_version} first (edge-agent update {base_name} "
            f"--version {base_version}, or import it from a stick), then this adapter"
        )

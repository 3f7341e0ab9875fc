"""Naming models: an installed name under the models folder, or any model folder's path."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from edge_agent.runtime.adapters import ADAPTER_CONFIG, AdapterRef, read_adapter
from edge_agent.runtime.errors import ModelFolderError
from edge_agent.runtime.model_folder import CONFIG_NAME

log = logging.getLogger(__name__)

EMBEDDINGS_CONFIG = "embeddings.json"  # an encoder for /v1/embeddings (runtime.encoder)
GENERATION = "generation"
EMBEDDINGS = "embeddings"
ADAPTER = "adapter"  # a LoRA adapter served on its base (runtime.adapters)


class ModelNotFound(Exception):
    pass


@dataclass(frozen=True)
class ModelRef:
    name: str
    path: Path
    kind: str = GENERATION


def installed_models(models_dir: Path) -> list[ModelRef]:
    """Models the store installed (served through their `active` pointer) and model
    folders copied there by hand."""
    if not models_dir.is_dir():
        return []
    found = []
    for entry in sorted(models_dir.iterdir()):
        for folder in (entry / "active", entry):
            if (folder / CONFIG_NAME).is_file():
                found.append(ModelRef(entry.name, folder))
                break
            if (folder / EMBEDDINGS_CONFIG).is_file():
                found.append(ModelRef(entry.name, folder, EMBEDDINGS))
                break
            if (folder / ADAPTER_CONFIG).is_file():
                found.append(ModelRef(entry.name, folder, ADAPTER))
                break
    return found


def installed_adapters(models_dir: Path) -> dict[str, AdapterRef]:
    """The installed LoRA adapters by name; one whose description is unreadable is left
    out (and logged), so it cannot stop the others from serving."""
    found = {}
    for ref in installed_models(models_dir):
        if ref.kind == ADAPTER:
            try:
                found[ref.name] = read_adapter(ref.name, ref.path)
            except ModelFolderError as exc:
                log.error("adapter %s is not served: %s", ref.name, exc)
    return found


def resolve_model(name_or_path: str, models_dir: Path) -> ModelRef:
    """A path that exists wins; otherwise an installed name; otherwise a clear error."""
    as_path = Path(name_or_path).expanduser()
    if as_path.is_dir() or "/" in name_or_path or name_or_path.startswith("."):
        if not as_path.exists():
            raise ModelNotFound(f"no model folder at {as_path}")
        return ModelRef(_name_for_folder(as_path), as_path)
    installed = {ref.name: ref for ref in installed_models(models_dir)}
    if name_or_path in installed:
        return installed[name_or_path]
    known = ", ".join(installed) or "none"
    raise ModelNotFound(
        f"no installed model named '{name_or_path}' in {models_dir} (installed: {known}); "
        "give the path of a model folder instead"
    )


def _name_for_folder(path: Path) -> str:
    return path.resolve().name

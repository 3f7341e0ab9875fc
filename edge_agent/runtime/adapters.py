"""LoRA adapters served on a loaded base model: onnxruntime-genai's `og.Adapters`.

A base built to accept adapters (the hub's `--adapter-targets`) has its LoRA weights as
graph inputs whose defaults are zero, so with no adapter active it answers as the plain
base. An adapter release is one `.onnx_adapter` file that overrides those inputs, and an
`adapter.json` that names the base it was made for. The base loads once; each request
activates its adapter on its own generator, so adapters of one base run side by side.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.runtime._og import og
from edge_agent.runtime.adapter_fit import check_fit
from edge_agent.runtime.errors import ModelFolderError

ADAPTER_CONFIG = "adapter.json"  # in an adapter release: its base and its file
ADAPTER_FILE = "adapter.onnx_adapter"
# In a base built for adapters: the LoRA inputs the graph takes, name -> [rows, columns]
# with the rank as 0 (any rank fits).
LORA_INPUTS = "lora_inputs.json"


@dataclass(frozen=True)
class AdapterRef:
    """An installed adapter: its name, file and the base (name, version) it fits."""

    name: str
    folder: Path
    base_name: str
    base_version: str

    @property
    def file(self) -> Path:
        return self.folder / ADAPTER_FILE

    @property
    def base(self) -> str:
        return f"{self.base_name}@{self.base_version}"

    def file_bytes(self) -> int:
        return self.file.stat().st_size


def parse_base(text: str) -> tuple[str, str]:
    """'name@version' -> (name, version); ValueError says what the form is."""
    name, at, version = text.partition("@")
    if not at or not name or not version:
        raise ValueError(f"base '{text}' must be NAME@VERSION, for example tiny@1.0.0")
    return name, version


def read_adapter(name: str, folder: Path) -> AdapterRef:
    config_path = folder / ADAPTER_CONFIG
    try:
        record = json.loads(config_path.read_text(encoding="utf-8"))
        base_name, base_version = parse_base(str(record["base"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelFolderError(config_path, f"not a readable adapter description: {exc}") from exc
    if not (folder / ADAPTER_FILE).is_file():
        raise ModelFolderError(folder / ADAPTER_FILE, "missing: the adapter has no weights")
    return AdapterRef(name, folder, base_name, base_version)


def is_adapter_folder(folder: Path) -> bool:
    return (folder / ADAPTER_CONFIG).is_file()


def accepts_adapters(model_folder: Path) -> bool:
    return (model_folder / LORA_INPUTS).is_file()


@dataclass(frozen=True)
class _Loaded:
    key: str  # its name in og.Adapters: one per version of the adapter's file
    identity: tuple[str, int, int]  # the file it was loaded from: real path, size, mtime
    bytes: int


def _identity(ref: AdapterRef) -> tuple[str, int, int]:
    """Which file `ref` is now: the store swaps an adapter's `active` pointer to its new
    version, so the same name and path can mean other weights."""
    real = ref.file.resolve()
    stat = real.stat()
    return str(real), stat.st_size, stat.st_mtime_ns


class LoadedAdapters:
    """The adapters loaded into one base model, each once, by name; an adapter whose file
    changed (a new version installed) loads again on its next request."""

    def __init__(self, model: Any, base_folder: Path) -> None:
        self._model = model
        self._base_folder = base_folder
        self._adapters: Any = None
        self._current: dict[str, _Loaded] = {}
        self._replaced: list[str] = []  # keys to unload once no generator uses them
        self._loads = 0
        self._lock = threading.Lock()

    def is_current(self, ref: AdapterRef) -> bool:
        """True when `ref`'s file as it is now is the one loaded under its name."""
        with self._lock:
            loaded = self._current.get(ref.name)
        return loaded is not None and loaded.identity == _identity(ref)

    def ensure(self, ref: AdapterRef) -> bool:
        """Load `ref` unless its file as it is now is loaded; True when this call loaded it."""
        with self._lock:
            identity = _identity(ref)
            previous = self._current.get(ref.name)
            if previous is not None and previous.identity == identity:
                return False
            check_fit(ref.file, self._base_folder / LORA_INPUTS)
            if self._adapters is None:
                self._adapters = og.Adapters(self._model)
            self._loads += 1
            key = f"{ref.name}#{self._loads}"
            self._adapters.load(str(ref.file), key)
            self._current[ref.name] = _Loaded(key, identity, identity[1])
            if previous is not None:
                self._replaced.append(previous.key)
            self._unload_replaced_locked()
            return True

    def _unload_replaced_locked(self) -> None:
        for key in list(self._replaced):
            try:
                self._adapters.unload(key)
            except RuntimeError:  # a generator still runs with it: retried on the next load
                continue
            self._replaced.remove(key)

    def activate(self, generator: Any, name: str) -> None:
        """Make `name` the adapter of `generator`: before its prompt is appended."""
        with self._lock:
            loaded = self._current.get(name)
        if loaded is None:
            raise KeyError(f"adapter {name} is not loaded on this base")
        generator.set_active_adapter(self._adapters, loaded.key)

    def loaded(self) -> dict[str, int]:
        """Name -> bytes of each loaded adapter (its current version)."""
        with self._lock:
            return {name: loaded.bytes for name, loaded in self._current.items()}

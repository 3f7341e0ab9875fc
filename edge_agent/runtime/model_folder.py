"""Validate an onnxruntime-genai model folder before handing it to the native loader.

The native loader's messages name neither the file nor the key; these checks do, so an
operator can fix a broken folder without reading C++ stack traces.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.runtime.errors import ModelFolderError

CONFIG_NAME = "genai_config.json"
CHAT_TEMPLATE_NAMES = ("chat_template.jinja", "chat_template.json")


@dataclass(frozen=True, kw_only=True)
class ModelFolder:
    path: Path
    model_type: str
    context_length: int
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    has_chat_template: bool
    weight_bytes: int
    # Key and value numbers the KV cache holds per token (2 x layers x kv heads x head
    # size); 0 when the config does not say. Sizes the prompt cache's memory budget.
    kv_values_per_token: int = 0


def _require(
    obj: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str, path: Path
) -> Any:
    if key not in obj:
        raise ModelFolderError(path, f"key '{where}{key}' is missing")
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ModelFolderError(
            path, f"key '{where}{key}' must be {names}, not {type(value).__name__}"
        )
    return value


def inspect_model_folder(path: Path) -> ModelFolder:
    """Check the folder's config and the files it names; return what the runtime needs."""
    path = path.expanduser()
    if not path.exists():
        raise ModelFolderError(path, "no such folder")
    if not path.is_dir():
        raise ModelFolderError(path, "not a folder (a model is a folder with genai_config.json)")
    config_path = path / CONFIG_NAME
    if not config_path.is_file():
        raise ModelFolderError(
            config_path, "missing: this is not an onnxruntime-genai model folder"
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFolderError(config_path, f"malformed JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise ModelFolderError(config_path, "top level must be a JSON object")

    model = _require(config, "model", dict, "", config_path)
    model_type = _require(model, "type", str, "model.", config_path)
    context_length = _require(model, "context_length", int, "model.", config_path)
    vocab_size = _require(model, "vocab_size", int, "model.", config_path)
    if context_length <= 0:
        raise ModelFolderError(config_path, "key 'model.context_length' must be positive")
    eos = _require(model, "eos_token_id", (int, list), "model.", config_path)
    eos_ids = tuple(eos) if isinstance(eos, list) else (eos,)
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in eos_ids):
        raise ModelFolderError(config_path, "key 'model.eos_token_id' must hold integers")
    decoder = _require(model, "decoder", dict, "model.", config_path)
    filename = _require(decoder, "filename", str, "model.decoder.", config_path)

    onnx_path = _inside(path, filename, config_path)
    if not onnx_path.is_file():
        raise ModelFolderError(onnx_path, "missing (named by model.decoder.filename)")
    weight_bytes = onnx_path.stat().st_size
    data_path = onnx_path.with_name(onnx_path.name + ".data")
    if data_path.is_file():
        weight_bytes += data_path.stat().st_size
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer.model").is_file():
        raise ModelFolderError(path / "tokenizer.json", "missing: the model has no tokenizer")

    return ModelFolder(
        path=path,
        model_type=model_type,
        context_length=context_length,
        vocab_size=vocab_size,
        eos_token_ids=eos_ids,
        has_chat_template=_has_chat_template(path),
        weight_bytes=weight_bytes,
        kv_values_per_token=_kv_values_per_token(decoder),
    )


def _kv_values_per_token(decoder: dict[str, Any]) -> int:
    shape = [decoder.get(k) for k in ("num_hidden_layers", "num_key_value_heads", "head_size")]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape):
        return 0
    layers, heads, size = (int(v) for v in shape)  # type: ignore[arg-type]
    return 2 * layers * heads * size


def _inside(root: Path, name: str, config_path: Path) -> Path:
    candidate = (root / name).resolve()
    if not candidate.is_relative_to(root.resolve()):
        raise ModelFolderError(config_path, f"file name '{name}' points outside the model folder")
    return candidate


def _has_chat_template(path: Path) -> bool:
    if any((path / name).is_file() for name in CHAT_TEMPLATE_NAMES):
        return True
    tok_config = path / "tokenizer_config.json"
    if tok_config.is_file():
        try:
            return bool(json.loads(tok_config.read_text(encoding="utf-8")).get("chat_template"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelFolderError(tok_config, f"malformed JSON: {exc}") from exc
    return False

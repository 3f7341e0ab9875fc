"""A PEFT LoRA adapter folder -> onnxruntime's adapter format for one base.

The base's `lora_inputs.json` (hub.registry.lora_base) names the LoRA inputs its graph
takes and their shapes. Each PEFT matrix maps to one of them: A (rank x in) is stored
transposed as in x rank, B (out x rank) as rank x out and multiplied by the adapter's
scaling, as the builder does when it bakes an adapter in. Anything that does not map
(a module or layer the base has no branch for, another width, a LoRA variant the graph
cannot express) is refused with what and why, before a file is written.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.runtime.adapters import LORA_INPUTS
from hub.registry.errors import ReleaseRefused
from hub.registry.lora_base import TARGET_BLOCKS, graph_input_name

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
_PEFT_KEY = re.compile(r"(?:^|\.)layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")
# LoRA variants whose arithmetic is not x @ A @ B * scaling: the base's branches cannot run them.
_UNSUPPORTED_FLAGS = ("use_dora", "use_qalora")


@dataclass(frozen=True)
class ConvertedAdapter:
    path: Path
    rank: int
    targets: tuple[str, ...]
    parameters: int


def read_peft_config(peft_dir: Path) -> dict[str, Any]:
    config_path = peft_dir / PEFT_CONFIG
    if not config_path.is_file():
        raise ReleaseRefused(f"{peft_dir}: no {PEFT_CONFIG}; pass a PEFT adapter folder")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReleaseRefused(f"{config_path}: malformed JSON: {exc}") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise ReleaseRefused(f"{config_path}: peft_type must be LORA")
    for flag in _UNSUPPORTED_FLAGS:
        if config.get(flag):
            raise ReleaseRefused(f"{config_path}: {flag} adapters are not supported; plain LoRA")
    for pattern in ("rank_pattern", "alpha_pattern"):
        if config.get(pattern):
            raise ReleaseRefused(
                f"{config_path}: {pattern} gives layers their own rank or alpha, which one "
                "adapter file for this base cannot hold; train with one r and lora_alpha"
            )
    alpha = config.get("lora_alpha", 1)
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not math.isfinite(alpha):
        raise ReleaseRefused(f"{config_path}: lora_alpha must be a number, not {alpha!r}")
    if config.get("bias", "none") != "none":
        raise ReleaseRefused(f"{config_path}: bias '{config['bias']}' is not supported; 'none'")
    return config


def scaling(config: dict[str, Any], rank: int) -> float:
    alpha = float(config.get("lora_alpha", rank))
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def convert_adapter(peft_dir: Path, base_dir: Path, out: Path) -> ConvertedAdapter:
    """Write `out` (.onnx_adapter) from `peft_dir` for the base in `base_dir`."""
    import numpy as np
    import onnxruntime as ort  # type: ignore[import-untyped]
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    config = read_peft_config(peft_dir)
    expected = _base_inputs(base_dir)
    weights_path = peft_dir / PEFT_WEIGHTS
    if not weights_path.is_file():
        raise ReleaseRefused(f"{peft_dir}: no {PEFT_WEIGHTS} (PEFT's safetensors weights)")
    try:
        weights = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ReleaseRefused(f"{weights_path}: not readable safetensors: {exc}") from None
    ranks = {w.shape[0] for k, w in weights.items() if k.endswith("lora_A.weight")}
    if len(ranks) != 1:
        raise ReleaseRefused(f"{weights_path}: the lora_A matrices' ranks differ: {ranks}")
    rank = ranks.pop()
    scale = scaling(config, rank)
    params: dict[str, Any] = {}
    targets: set[str] = set()
    for key, tensor in sorted(weights.items()):
        name, target = _input_for(key, weights_path)
        if name not in expected:
            accepted = sorted({n.split(".")[4] for n in expected})
            raise ReleaseRefused(
                f"{weights_path}: {key} adapts {target} of a layer the base has no LoRA "
                f"input for (the base accepts adapters on {', '.join(accepted)} of "
                f"{_layer_count(expected)} layers); rebuild the base with --adapter-targets "
                "that cover it, or train the adapter on those"
            )
        matrix = np.ascontiguousarray(tensor.astype(np.float32).T)
        if ".lora_B." in name:
            matrix = matrix * np.float32(scale)
        want = expected[name]
        got = list(matrix.shape)
        if tensor.ndim != 2 or (want[0] and got[0] != want[0]) or (want[1] and got[1] != want[1]):
            raise ReleaseRefused(
                f"{weights_path}: {key} has shape {list(tensor.shape)}, which does not fit "
                f"the base ({name} takes {_shape_text(want)}): the adapter was trained on a "
                "model of another shape"
            )
        params[name] = ort.OrtValue.ortvalue_from_numpy(matrix)
        targets.add(target)
    if not params:
        raise ReleaseRefused(f"{weights_path}: holds no LoRA matrices")
    adapter = ort.AdapterFormat()
    adapter.set_adapter_version(1)
    adapter.set_model_version(1)
    adapter.set_parameters(params)
    out.parent.mkdir(parents=True, exist_ok=True)
    adapter.export_adapter(str(out))
    return ConvertedAdapter(out, rank, tuple(sorted(targets)), len(params))


def _base_inputs(base_dir: Path) -> dict[str, list[int]]:
    path = base_dir / LORA_INPUTS
    if not path.is_file():
        raise ReleaseRefused(
            f"{base_dir}: this base was not built to accept adapters (no {LORA_INPUTS}); "
            "import its Hugging Face folder again with --adapter-targets, as a new version"
        )
    shapes: dict[str, list[int]] = json.loads(path.read_text(encoding="utf-8"))
    return shapes


def _input_for(key: str, where: Path) -> tuple[str, str]:
    match = _PEFT_KEY.search(key)
    if match is None or match.group(2) not in TARGET_BLOCKS:
        raise ReleaseRefused(
            f"{where}: tensor {key} is not a LoRA matrix of a projection this runtime can "
            f"adapt ({', '.join(TARGET_BLOCKS)})"
        )
    layer, target, matrix = match.groups()
    return graph_input_name(int(layer), target, matrix), target


def _shape_text(shape: list[int]) -> str:
    return "[" + ", ".join(str(d) if d else "rank" for d in shape) + "]"


def _layer_count(expected: dict[str, list[int]]) -> int:
    return len({n.split(".")[2] for n in expected})

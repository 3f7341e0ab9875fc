"""A base model built to accept LoRA adapters at run time.

onnxruntime-genai's builder adds a LoRA branch (x @ A @ B, added to the layer's output)
to each target projection when it is given a PEFT adapter (`adapter_path`), but bakes
that adapter's weights into the graph. Here it is given a zero adapter, the branches stay
in float (`nodes_to_exclude`: int4 would fold them into the quantized weights), and the
branch weights become graph inputs whose zero initializers are the default. So with no
adapter active the base answers as it would without branches, and an `.onnx_adapter` file
(onnxruntime's adapter format) with those inputs' names switches a request to its adapter.
`lora_inputs.json` records each input's shape for the adapter import to check against.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_agent.runtime.adapters import LORA_INPUTS
from hub.registry.errors import ReleaseRefused

# PEFT's module names -> the builder's block of the layer that holds them.
TARGET_BLOCKS = {
    "q_proj": "attn",
    "k_proj": "attn",
    "v_proj": "attn",
    "o_proj": "attn",
    "gate_proj": "mlp",
    "up_proj": "mlp",
    "down_proj": "mlp",
}
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
WEIGHTS_FILE = "adapter_model.safetensors"  # PEFT's file name
# Each input's rank is its own symbolic dimension: an adapter may leave some inputs at their
# rank-1 zero defaults, and onnxruntime plans buffers as if one name meant one size.
RANK_DIM = "lora_rank_{}"


def parse_targets(text: str) -> tuple[str, ...]:
    """'q_proj,v_proj' -> the module names, checked against what the builder supports."""
    targets = tuple(sorted({t.strip() for t in text.split(",") if t.strip()}))
    unknown = [t for t in targets if t not in TARGET_BLOCKS]
    if not targets or unknown:
        raise ReleaseRefused(
            f"adapter targets '{text}': {', '.join(unknown) or 'none given'} not supported; "
            f"choose from {', '.join(TARGET_BLOCKS)}"
        )
    return targets


def graph_input_name(layer: int, target: str, matrix: str) -> str:
    """The builder's weight name of layer `layer`'s `target` LoRA matrix ('A' or 'B')."""
    return f"model.layers.{layer}.{TARGET_BLOCKS[target]}.{target}.lora_{matrix}.MatMul.weight"


def builder_options(hf_dir: Path, template: Path, targets: tuple[str, ...]) -> list[str]:
    """The builder's extra options that add float LoRA branches fed by `template`."""
    layers = int(json.loads((hf_dir / "config.json").read_text())["num_hidden_layers"])
    excluded = [
        f"/model/layers.{layer}/{TARGET_BLOCKS[target]}/{target}/lora_{matrix}/MatMul"
        for layer in range(layers)
        for target in targets
        for matrix in "AB"
    ]
    return [f"adapter_path={template}", "nodes_to_exclude=" + ",".join(excluded)]


def write_zero_adapter(hf_dir: Path, out_dir: Path, targets: tuple[str, ...]) -> Path:
    """A rank-1 PEFT adapter of zeros on `hf_dir`'s model: the branches' template."""
    import torch
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(hf_dir)
    return write_peft_adapter(
        config, out_dir, targets, rank=1, alpha=1, fill=lambda _name, shape: torch.zeros(shape)
    )


def write_peft_adapter(
    model_config: Any,
    out_dir: Path,
    targets: tuple[str, ...],
    *,
    rank: int,
    alpha: int,
    fill: Callable[[str, tuple[int, ...]], Any],
) -> Path:
    """A PEFT LoRA adapter folder for a model of `model_config`'s shape; `fill(name,
    shape)` makes each matrix (a torch tensor)."""
    import torch
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):  # only the shapes matter: no weights are read or made
        model = AutoModelForCausalLM.from_config(model_config)  # type: ignore[no-untyped-call]
    lora = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0)
    with warnings.catch_warnings():
        # peft 0.21 reads transformers 5's deprecated is_gradient_checkpointing.
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing`", FutureWarning)
        shapes: dict[str, Any] = get_peft_model_state_dict(get_peft_model(model, lora))
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {name: fill(name, tuple(meta.shape)).contiguous() for name, meta in shapes.items()}
    save_file(tensors, out_dir / WEIGHTS_FILE)
    lora.save_pretrained(str(out_dir))
    return out_dir


def expose_lora_inputs(model_dir: Path) -> dict[str, list[int]]:
    """Turn the LoRA branch weights of `model_dir/model.onnx` into inputs with their
    zeros as defaults; write and return lora_inputs.json (name -> shape, rank as 0)."""
    import onnx
    from onnx import helper

    graph_path = model_dir / "model.onnx"
    data_name = "model.onnx.data"
    model = onnx.load(str(graph_path))  # reads the external data into memory
    shapes: dict[str, list[int]] = {}
    for init in model.graph.initializer:
        if ".lora_A." not in init.name and ".lora_B." not in init.name:
            continue
        rank = RANK_DIM.format(len(shapes))
        rows, cols = (int(d) for d in init.dims)
        is_a = ".lora_A." in init.name
        shape: list[int | str] = [rows, rank] if is_a else [rank, cols]
        model.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, shape))
        shapes[init.name] = [rows, 0] if is_a else [0, cols]
    if not shapes:
        raise ReleaseRefused(f"{graph_path}: the builder made no LoRA branches")
    # The builder recorded the template's rank in the shapes of the weights and of the
    # A products; left there, they would pin every adapter to rank 1.
    kept = [v for v in model.graph.value_info if v.name not in shapes and "/lora_A/" not in v.name]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)
    (model_dir / data_name).unlink()
    graph_path.unlink()
    onnx.save(model, str(graph_path), save_as_external_data=True, location=data_name)
    (model_dir / LORA_INPUTS).write_text(json.dumps(dict(sorted(shapes.items())), indent=1))
    return shapes

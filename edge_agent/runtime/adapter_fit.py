"""Does an `.onnx_adapter` fit the base it is loaded on? Checked when it loads, so an
adapter whose tensors the base's graph cannot take is refused by name, instead of failing
inside onnxruntime at each of its requests.

The base's `lora_inputs.json` lists the LoRA inputs its graph takes, name -> [rows,
columns] with 0 for the rank. An adapter fits when each tensor names one of those inputs,
is float32 with that shape, and the A and B matrices of one projection share their rank.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnxruntime as ort  # type: ignore[import-untyped]

from edge_agent.runtime.errors import AdapterDoesNotFit

FLOAT32 = "tensor(float)"


def check_fit(adapter_file: Path, lora_inputs: Path) -> None:
    """Raise AdapterDoesNotFit naming the first tensor the base cannot take."""
    try:
        expected: dict[str, list[int]] = json.loads(lora_inputs.read_text(encoding="utf-8"))
        params = ort.AdapterFormat.read_adapter(str(adapter_file)).get_parameters()
    except (OSError, ValueError, RuntimeError) as exc:
        raise AdapterDoesNotFit(f"{adapter_file}: not readable: {exc}") from None
    where = f"{adapter_file} does not fit its base"
    if not params:
        raise AdapterDoesNotFit(f"{where}: it holds no tensors")
    ranks: dict[str, int] = {}
    for name, value in sorted(params.items()):
        if name not in expected:
            raise AdapterDoesNotFit(f"{where}: the base has no LoRA input {name}")
        if value.data_type() != FLOAT32:
            raise AdapterDoesNotFit(f"{where}: {name} is {value.data_type()}, not {FLOAT32}")
        shape, want = list(value.shape()), expected[name]
        if len(shape) != 2 or any(w and s != w for s, w in zip(shape, want, strict=True)):
            raise AdapterDoesNotFit(f"{where}: {name} has shape {shape}, the base takes {want}")
        rank = shape[1] if want[1] == 0 else shape[0]
        projection = name.replace(".lora_A.", ".lora_?.").replace(".lora_B.", ".lora_?.")
        if ranks.setdefault(projection, rank) != rank:
            raise AdapterDoesNotFit(
                f"{where}: {name} has rank {rank}, its pair {ranks[projection]}"
            )

"""A Hugging Face sentence encoder (BERT-style) into an int8 ONNX embeddings folder.

The export and the quantization are optimum's (`ORTModelForFeatureExtraction` export,
`ORTQuantizer` dynamic int8). optimum-onnx pins transformers < 4.58 while the
generation builder needs transformers 5 (NOTES.md), so optimum runs in its own virtual
environment, made on first use under ~/.cache/edge-fleet/optimum-venv, as a subprocess.
Where that environment cannot be made (no registry, no wheel), the export falls back to
torch.onnx and onnxruntime's own `quantize_dynamic` (the same int8 scheme), and the
folder's embeddings.json says which path made it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from hub.registry.errors import ReleaseRefused

log = logging.getLogger(__name__)

EMBEDDINGS_CONFIG = "embeddings.json"
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
OPTIMUM_REQUIREMENTS = (
    "optimum-onnx",
    "onnxruntime==1.32.0",
    "transformers<4.58",
    "torch==2.13.0",  # the CPU build the machines carry (an unpinned torch pulls CUDA)
)
_SCRIPT = Path(__file__).with_name("optimum_encoder_script.py")


def optimum_venv_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "edge-fleet" / "optimum-venv"


def is_encoder_folder(folder: Path) -> bool:
    """A Hugging Face folder of a BERT-style encoder (no language-model head)."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    architectures = config.get("architectures") or []
    encoder_types = {"bert", "roberta", "xlm-roberta", "distilbert", "mpnet", "nomic_bert"}
    return config.get("model_type") in encoder_types and not any(
        a.endswith(("ForMaskedLM", "ForCausalLM")) for a in architectures
    )


def ensure_optimum_venv(venv: Path | None = None) -> Path:
    """The isolated environment's python, made once (a marker says it is complete)."""
    venv = venv or optimum_venv_dir()
    python = venv / "bin" / "python"
    marker = venv / ".edge-fleet-ready"
    if marker.is_file():
        return python
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", *OPTIMUM_REQUIREMENTS],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"pip could not install optimum into {venv}: {done.stderr[-2000:]}")
    marker.write_text(" ".join(OPTIMUM_REQUIREMENTS) + "\n")
    return python


def export_encoder(source: Path, out_dir: Path, *, allow_fallback: bool = True) -> Path:
    """Write `out_dir` (model.onnx int8, tokenizer.json, embeddings.json); returns it."""
    if not (source / TOKENIZER_FILE).is_file():
        raise ReleaseRefused(f"{source}: no {TOKENIZER_FILE}; save the encoder's fast tokenizer")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="encoder-export-") as tmp:
        try:
            quantized, converted_by = _with_optimum(source, Path(tmp))
        except (RuntimeError, subprocess.CalledProcessError, OSError) as exc:
            if not allow_fallback:
                raise ReleaseRefused(f"optimum could not export {source}: {exc}") from exc
            log.warning("optimum unavailable (%s); exporting with torch.onnx instead", exc)
            quantized = _with_torch(source, Path(tmp))
            converted_by = (
                f"torch.onnx + onnxruntime quantize_dynamic int8 (optimum unavailable: "
                f"{str(exc)[:300]})"
            )
        shutil.copyfile(quantized, out_dir / MODEL_FILE)
    shutil.copyfile(source / TOKENIZER_FILE, out_dir / TOKENIZER_FILE)
    (out_dir / EMBEDDINGS_CONFIG).write_text(
        json.dumps(_embeddings_config(source, converted_by), indent=2) + "\n"
    )
    return out_dir


def _with_optimum(source: Path, work: Path) -> tuple[Path, str]:
    python = ensure_optimum_venv()
    done = subprocess.run(
        [str(python), str(_SCRIPT), str(source), str(work)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the optimum export failed: {done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return Path(result["model"]), f"optimum {result['optimum']} (ORTQuantizer, dynamic int8)"


def _with_torch(source: Path, work: Path) -> Path:
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic  # type: ignore[import-untyped]
    from transformers import AutoModel

    model = AutoModel.from_pretrained(source).eval()
    ids = torch.ones((1, 8), dtype=torch.int64)
    fp32 = work / "model-fp32.onnx"
    axes = {0: "batch", 1: "sequence"}
    torch.onnx.export(
        model,
        (ids, torch.ones_like(ids), torch.zeros_like(ids)),
        str(fp32),
        input_names=["input_ids", "attention_mask", "token_type_ids"],
        output_names=["last_hidden_state"],
        dynamic_axes={
            "input_ids": axes,
            "attention_mask": axes,
            "token_type_ids": axes,
            "last_hidden_state": axes,
        },
        dynamo=False,
    )
    int8 = work / "model-int8.onnx"
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    return int8


def _embeddings_config(source: Path, converted_by: str) -> dict[str, Any]:
    """How the agent pools and normalises, from sentence-transformers' files if present."""
    config = json.loads((source / "config.json").read_text())
    pooling, normalize = "mean", True
    pooling_file = source / "1_Pooling" / "config.json"
    if pooling_file.is_file():
        modes = json.loads(pooling_file.read_text())
        pooling = "cls" if modes.get("pooling_mode_cls_token") else "mean"
        modules = source / "modules.json"
        normalize = modules.is_file() and "Normalize" in modules.read_text()
    return {
        "kind": "embeddings",
        "model_file": MODEL_FILE,
        "tokenizer_file": TOKENIZER_FILE,
        "pooling": pooling,
        "normalize": normalize,
        "dimensions": int(config["hidden_size"]),
        "max_input_tokens": int(config.get("max_position_embeddings", 512)),
        # Matryoshka-trained models may be truncated to fewer dimensions and renormalised;
        # an ordinary encoder may not (the API answers 400 for `dimensions` then).
        "matryoshka": False,
        "converted_by": converted_by,
    }

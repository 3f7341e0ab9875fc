"""Convert a Hugging Face model folder to an onnxruntime-genai int4 model with its builder.

The builder runs in a child process: it peaks at several GB for a 360M model, and a
separate process hands all of that back to the system when it ends.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hub.registry.hf_folder import hf_folder_problem
from hub.registry.lora_base import builder_options as lora_builder_options
from hub.registry.lora_base import expose_lora_inputs, write_zero_adapter


class ConversionError(RuntimeError):
    """The model builder failed; the message carries the tail of its output."""


@dataclass(frozen=True, kw_only=True)
class QuantOptions:
    """Weight-only quantization settings passed to the builder.

    Defaults chosen by bench/quantization.py on the SmolLM2-360M shape (2-core CPU, one
    run, against the builder's own defaults of block size 32): block size 128 decodes
    1.44x faster with 0.90x the weight bytes and 0.78x the time to first token; block 64
    is 1.30x. Accuracy level 4 (int8 activations) is the fastest CPU kernel: level 1
    (fp32) decodes at half the speed for the same size.
    """

    precision: str = "int4"
    execution_provider: str = "cpu"
    block_size: int = 128
    accuracy_level: int = 4
    extra: dict[str, str] = field(default_factory=dict)

    def builder_options(self) -> list[str]:
        options = {
            "block_size": str(self.block_size),
            "accuracy_level": str(self.accuracy_level),
            **self.extra,
        }
        return [f"{key}={value}" for key, value in sorted(options.items())]

    def as_record(self) -> dict[str, object]:
        return {
            "precision": self.precision,
            "execution_provider": self.execution_provider,
            "block_size": self.block_size,
            "accuracy_level": self.accuracy_level,
            "extra": dict(sorted(self.extra.items())),
        }


def convert_hf_folder(
    hf_dir: Path,
    out_dir: Path,
    options: QuantOptions,
    *,
    on_line: Callable[[str], None] | None = None,
    adapter_targets: tuple[str, ...] = (),
) -> Path:
    """Convert `hf_dir` into `out_dir`, which must not exist yet; returns `out_dir`.
    `adapter_targets` (PEFT module names): build a base that accepts LoRA adapters at run
    time on those projections (hub.registry.lora_base).

    The output is written into a temporary sibling and renamed into place, so a crash or
    a failed conversion never leaves a half-written model folder behind.
    """
    if out_dir.exists():
        raise ConversionError(f"output folder {out_dir} already exists; remove it or pick another")
    problem = hf_folder_problem(hf_dir)
    if problem is not None:
        raise ConversionError(problem)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    cache = staging / "_builder_cache"
    lora_options: list[str] = []
    if adapter_targets:
        template = write_zero_adapter(hf_dir, staging / "_lora_template", adapter_targets)
        lora_options = lora_builder_options(hf_dir, template, adapter_targets)
    cmd = [
        sys.executable,
        "-m",
        "onnxruntime_genai.models.builder",
        "-i",
        str(hf_dir),
        "-o",
        str(staging / "model"),
        "-p",
        options.precision,
        "-e",
        options.execution_provider,
        "-c",
        str(cache),
        "--extra_options",
        *options.builder_options(),
        *lora_options,
    ]
    # The builder stamps the graph with `git rev-parse HEAD` run beside its own files; in a
    # virtual environment inside a checkout that is the checkout's commit, which would make
    # every commit's conversion differ. Without a git directory it uses its release stamp.
    env = {
        **os.environ,
        "ORT_DISABLE_TELEMETRY": "1",
        "HF_HUB_OFFLINE": "1",
        "GIT_DIR": os.devnull,
    }
    tail: list[str] = []
    try:
        with subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        ) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip()
                tail = [*tail[-29:], line]
                if on_line is not None:
                    on_line(line)
            rc = proc.wait()
        if rc != 0:
            raise ConversionError(
                f"model builder exited with status {rc} converting {hf_dir}:\n" + "\n".join(tail)
            )
        if adapter_targets:
            expose_lora_inputs(staging / "model")
        staging.joinpath("model").rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir

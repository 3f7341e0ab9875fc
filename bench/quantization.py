"""Quantization options for the default conversion: block size and accuracy level.

Builds the `small` test model once per option set (cached), then measures each with the
same plain onnxruntime-genai loop that bench/inference.py uses as its reference, all in
one run and interleaved, so drifting load hits every variant alike. Figures are ratios
against the model builder's own defaults (block size 32, accuracy level 4 on CPU).

The last line is one JSON object with every figure.

    .venv/bin/python bench/quantization.py [--repeats 5] [--new-tokens 128]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import figure, median  # noqa: E402
from inference import RawRun, raw_reference, weight_bytes  # noqa: E402

from hub.registry import synthetic  # noqa: E402
from hub.registry.convert import QuantOptions  # noqa: E402

# (label, options); the first is the reference: the builder's defaults for the CPU.
VARIANTS: list[tuple[str, QuantOptions]] = [
    ("block32_acc4", QuantOptions(block_size=32, accuracy_level=4)),
    ("block64_acc4", QuantOptions(block_size=64, accuracy_level=4)),
    ("block128_acc4", QuantOptions(block_size=128, accuracy_level=4)),
    ("block128_acc1", QuantOptions(block_size=128, accuracy_level=1)),
]
DEFAULT = "block128_acc4"  # what QuantOptions() gives; the choice this benchmark checks


def build(options: QuantOptions) -> Path:
    recipe = dataclasses.replace(synthetic.RECIPES["small"], quant=options)
    print(f"model for {options.as_record()}: building or reusing the cache", flush=True)
    return synthetic.build(recipe)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=128)
    args = parser.parse_args(argv)
    assert QuantOptions().as_record() == dict(VARIANTS[2][1].as_record()), "default moved"

    dirs = {label: build(options) for label, options in VARIANTS}
    runs: dict[str, list[RawRun]] = {label: [] for label in dirs}
    with tempfile.TemporaryDirectory(prefix="bench-quant-") as tmp:
        for label, model_dir in dirs.items():
            print(f"{label}: {weight_bytes(model_dir) / 1e6:.1f} MB of weights", flush=True)
        # One child per variant, kept alive, runs interleaved round by round.
        with ExitStack() as stack:
            refs = {}
            for label, model_dir in dirs.items():
                workdir = Path(tmp) / label
                workdir.mkdir()
                refs[label] = stack.enter_context(
                    raw_reference(model_dir, args.new_tokens, workdir)
                )
            for ref in refs.values():
                ref.run()  # warm-up
            for round_no in range(args.repeats):
                for label, ref in refs.items():
                    runs[label].append(ref.run())
                print(f"round {round_no + 1}/{args.repeats} done", flush=True)

    base = VARIANTS[0][0]
    base_decode = median([r.decode_tok_s for r in runs[base]])
    base_ttft = median([r.ttft_ms for r in runs[base]])
    base_size = weight_bytes(dirs[base])
    figures: dict[str, Any] = {}
    for label, model_dir in dirs.items():
        decode = median([r.decode_tok_s for r in runs[label]])
        ttft = median([r.ttft_ms for r in runs[label]])
        size = weight_bytes(model_dir)
        print(
            f"{label:>14}: {size / 1e6:6.1f} MB ({size / base_size:.2f}x), "
            f"decode {decode:6.1f} tok/s ({decode / base_decode:.2f}x), "
            f"first token {ttft:6.1f} ms ({ttft / base_ttft:.2f}x)"
        )
        figures[f"{label}_weight_mb"] = figure(size / 1e6)
        figures[f"{label}_decode_tok_s"] = figure(decode)
        figures[f"{label}_ttft_ms"] = figure(ttft)
        chosen = label == DEFAULT
        figures[f"{label}_decode_vs_builder_default"] = figure(
            decode / base_decode,
            ">= 1.0" if chosen else None,
            decode >= base_decode if chosen else None,
        )
        figures[f"{label}_size_vs_builder_default"] = figure(
            size / base_size, "<= 1.0" if chosen else None, size <= base_size if chosen else None
        )
    fastest = max(dirs, key=lambda label: median([r.decode_tok_s for r in runs[label]]))
    print(f"fastest decode: {fastest}; default: {DEFAULT}")
    print(
        json.dumps(
            {
                "figures": figures,
                "reference": "onnxruntime-genai with the model builder's defaults (block32_acc4)",
                "fastest": fastest,
                "default": DEFAULT,
                "settings": {"repeats": args.repeats, "new_tokens": args.new_tokens},
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

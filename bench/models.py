"""Many models on one agent: on-demand loading and embeddings throughput, same run.

- First-request latency of a model loaded on demand: an agent (the real app, uvicorn on
  a free loopback port) over a models folder with nothing loaded; the first chat request
  waits for the load, the second finds it loaded. The memory the load took (this
  process's RSS) is set beside the pool's estimate (files plus measured overhead).
- Embeddings: inputs/s at 128 tokens through POST /v1/embeddings (batches of 32, base64
  as the openai client asks) against a raw onnxruntime session on the same exported int8
  graph, one input per run as the agent does (target >= 0.9x); a raw padded batch of 32
  is reported beside it for what batching would change. The encoder is random-weight,
  MiniLM-L6-shaped, exported and quantized by the hub (optimum in its own venv).

The last line is one JSON object with every figure (the house style of bench/).

    .venv/bin/python bench/models.py [--repeats 3] [--model tiny|small] [--encoder minilm|tiny]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from common import figure, median, proc_status_kib, report

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # run as a plain script from anywhere

TARGET_RATIO = 0.9
TOKENS = 128
BATCH = 32


class Server:
    def __init__(self, app: Any) -> None:
        import socket

        import uvicorn

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def rss_mib() -> float:
    return proc_status_kib("self", "VmRSS") / 1024


def on_demand(model: str, work: Path) -> dict[str, Any]:
    import httpx

    from edge_agent.api import create_app
    from edge_agent.config import ApiConfig
    from edge_agent.runtime import RuntimeSettings, SchedulerLimits
    from edge_agent.runtime.pool import ModelPool, estimate_bytes
    from edge_agent.runtime.service import ModelService
    from hub.registry import synthetic

    folder = work / "models" / model
    shutil.copytree(synthetic.build(synthetic.RECIPES[model]), folder)
    pool = ModelPool(
        discover=lambda: {model: folder},
        make_service=lambda name, path: ModelService(
            name, path, RuntimeSettings(), SchedulerLimits()
        ),
    )
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    with Server(create_app(ApiConfig(), [], pool=pool)) as server:
        before = rss_mib()
        times = []
        for _ in range(2):
            started = time.perf_counter()
            reply = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=300)
            reply.raise_for_status()
            times.append(time.perf_counter() - started)
        after = rss_mib()
    return {
        "first_request_s": times[0],
        "loaded_request_s": times[1],
        "load_rss_mib": after - before,
        "estimate_mib": estimate_bytes(folder) / 2**20,
    }


def texts_of(encoder: Any, count: int) -> list[str]:
    """Texts of exactly TOKENS tokens ([CLS] and [SEP] included), whole-word vocabulary."""
    import random

    vocab = encoder.tokenizer.get_vocab()
    words = sorted(w for w in vocab if w.isalpha() and w.islower() and not w.startswith("#"))
    rng = random.Random(7)
    texts = []
    while len(texts) < count:
        text = " ".join(rng.choice(words) for _ in range(TOKENS - 2))
        if len(encoder.tokenize([text])[0]) == TOKENS:
            texts.append(text)
    return texts


def embeddings(recipe: str, repeats: int, work: Path) -> dict[str, Any]:
    import httpx
    import numpy as np
    import onnxruntime as ort

    from edge_agent.api import create_app
    from edge_agent.config import ApiConfig
    from edge_agent.runtime.encoder import Encoder, Encoders
    from edge_agent.runtime.machine import usable_cores
    from hub.registry import synthetic_encoder

    folder = synthetic_encoder.build(synthetic_encoder.ENCODER_RECIPES[recipe])
    texts = texts_of(Encoder("probe", folder), BATCH)
    ids = Encoder("probe", folder).tokenize(texts)
    options = ort.SessionOptions()
    options.intra_op_num_threads = usable_cores()
    raw = ort.InferenceSession(
        str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )

    def raw_one() -> None:
        for row in ids:
            x = np.asarray([row], dtype=np.int64)
            raw.run(
                None,
                {
                    "input_ids": x,
                    "attention_mask": np.ones_like(x),
                    "token_type_ids": np.zeros_like(x),
                },
            )

    def raw_batch() -> None:
        x = np.asarray(ids, dtype=np.int64)
        raw.run(
            None,
            {"input_ids": x, "attention_mask": np.ones_like(x), "token_type_ids": np.zeros_like(x)},
        )

    body = {"model": "encoder", "input": texts, "encoding_format": "base64"}
    rates: dict[str, list[float]] = {"raw": [], "raw_batched": [], "api": []}
    with (
        Server(
            create_app(ApiConfig(), [], encoders=Encoders(lambda: {"encoder": folder}))
        ) as server,
        httpx.Client(timeout=300) as client,
    ):
        client.post(f"{server.url}/v1/embeddings", json=body).raise_for_status()  # load, warm
        raw_one()
        for _ in range(repeats):  # alternate, so drift in the machine hits both alike
            for kind, run in (
                ("raw", raw_one),
                (
                    "api",
                    lambda: client.post(
                        f"{server.url}/v1/embeddings", json=body
                    ).raise_for_status(),
                ),
                ("raw_batched", raw_batch),
            ):
                started = time.perf_counter()
                run()
                rates[kind].append(BATCH / (time.perf_counter() - started))
    return {kind: median(values) for kind, values in rates.items()} | {
        "model_mib": (folder / "model.onnx").stat().st_size / 2**20
    }


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-models-") as tmp:
        loads = on_demand(args.model, Path(tmp))
        embed = embeddings(args.encoder, args.repeats, Path(tmp))
    ratio = embed["api"] / embed["raw"]
    return {
        "benchmark": "models",
        "model": args.model,
        "encoder": args.encoder,
        "figures": {
            "first_request_on_demand_s": figure(loads["first_request_s"]),
            "request_once_loaded_s": figure(loads["loaded_request_s"]),
            "load_rss_mib": figure(loads["load_rss_mib"]),
            "pool_estimate_mib": figure(loads["estimate_mib"]),
            "embeddings_api_inputs_per_s": figure(embed["api"]),
            "embeddings_raw_inputs_per_s": figure(embed["raw"]),
            "embeddings_raw_batched_inputs_per_s": figure(embed["raw_batched"]),
            "embeddings_api_vs_raw": figure(ratio, f">= {TARGET_RATIO}", ratio >= TARGET_RATIO),
            "encoder_model_mib": figure(embed["model_mib"]),
        },
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", choices=("tiny", "small"), default="tiny")
    parser.add_argument("--encoder", choices=("minilm", "tiny"), default="minilm")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    report(benchmark(parse_args(argv)))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    sys.exit(main())

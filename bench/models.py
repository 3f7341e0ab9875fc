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

- LoRA adapters (the model's recipe built to accept adapters, three random PEFT adapters
  imported by the hub): memory (RSS, each side in its own fresh process) of one base with
  3 adapters loaded and used against 4 full copies of the model (target <= 0.4x), and the
  pool's own accounting of the same; the switch cost per request, a one-token greedy
  request rotating over the 3 adapters against the same request always on one adapter
  (target < 5 ms), with the bare base and the activation call itself beside it; the bytes
  a device moves for the adapter release against its base's release.

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
ADAPTER_MEMORY_TARGET = 0.4
SWITCH_TARGET_MS = 5.0
ADAPTER_NAMES = ("contracts-fr", "triage-en", "review-de")
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


def adapter_release(model: str, work: Path) -> tuple[Path, dict[str, Path], dict[str, int]]:
    """The adapter-ready base and 3 adapters as a device installs them, and the release
    bytes (unique chunks) of the base and of one adapter."""
    from hub.registry import synthetic, synthetic_adapter
    from hub.registry.adapter_import import import_adapter, materialize
    from hub.registry.repository import ReleaseRepository

    recipe = synthetic.RECIPES[model]
    base = synthetic_adapter.build_base(synthetic_adapter.AdapterBaseRecipe(model=recipe))
    repo = ReleaseRepository.create(work / "repo", work / "keys")
    base_manifest = repo.publish(base, model, "1.0.0")
    folders = {}
    sizes = {"base": sum(base_manifest.unique_chunks().values())}
    for seed, name in enumerate(ADAPTER_NAMES, start=1):
        peft = synthetic_adapter.build_adapter(
            synthetic_adapter.AdapterRecipe(model=recipe, seed=seed)
        )
        manifest = import_adapter(repo, peft, f"{model}@1.0.0", name, "1.0.0")
        sizes[name] = sum(manifest.unique_chunks().values())
        folders[name] = materialize(repo.root, manifest, work / "adapters" / name)
    return base, folders, sizes


def _rss_loaded(warm_with: str, base: str, adapters: list[str], copies: list[str]) -> float:
    """In a fresh process: the RSS (MiB) that loading `base` plus the adapters, or plus
    full copies of the model, takes, each used for one token. The runtime is warmed on
    the tiny test model first, so its own libraries count on neither side."""
    from edge_agent.runtime import LoadedModel, RuntimeSettings, SamplingParams
    from edge_agent.runtime.adapters import AdapterRef

    def one_token(model: LoadedModel, adapter: str | None = None) -> None:
        params = SamplingParams(max_tokens=1, temperature=0, adapter=adapter)
        model.new_generator([model.encode("hi")], params, 8).generate_next_token()

    warm = LoadedModel.load("warm", Path(warm_with), RuntimeSettings())
    one_token(warm)
    del warm
    before = rss_mib()
    kept = [LoadedModel.load("base", Path(base), RuntimeSettings())]
    one_token(kept[0])
    for folder in adapters:
        name = Path(folder).name
        kept[0].adapters.ensure(AdapterRef(name, Path(folder), "base", "1.0.0"))
        one_token(kept[0], name)
    for index, folder in enumerate(copies):
        kept.append(LoadedModel.load(f"copy{index}", Path(folder), RuntimeSettings()))
        one_token(kept[-1])
    return rss_mib() - before


def adapter_memory(base: Path, adapters: dict[str, Path], work: Path) -> dict[str, float]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from edge_agent.runtime.pool import estimate_bytes
    from hub.registry import synthetic

    warm = str(synthetic.build(synthetic.RECIPES["tiny"]))
    copies = []
    for index in range(3):  # separate folders: nothing can be shared between the loads
        copies.append(str(shutil.copytree(base, work / f"copy{index}")))
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=spawn, max_tasks_per_child=1) as pool:
        with_adapters = pool.submit(
            _rss_loaded, warm, str(base), [str(p) for p in adapters.values()], []
        ).result()
    with ProcessPoolExecutor(1, mp_context=spawn, max_tasks_per_child=1) as pool:
        full = pool.submit(_rss_loaded, warm, str(base), [], copies).result()
    adapter_files = sum((p / "adapter.onnx_adapter").stat().st_size for p in adapters.values())
    return {
        "rss_base_with_adapters_mib": with_adapters,
        "rss_four_models_mib": full,
        "pool_base_with_adapters": estimate_bytes(base) + adapter_files,
        "pool_four_models": 4 * estimate_bytes(base),
    }


def adapter_switch(base: Path, adapters: dict[str, Path], repeats: int) -> dict[str, float]:
    """Milliseconds per short greedy request (a one-token answer, so the switch is not lost
    in decoding time): rotating adapters, one adapter, the bare base; and the activation
    call itself when it switches."""
    from edge_agent.runtime import LoadedModel, RuntimeSettings, SamplingParams
    from edge_agent.runtime._og import og
    from edge_agent.runtime.adapters import AdapterRef

    model = LoadedModel.load("base", base, RuntimeSettings())
    for name, folder in adapters.items():
        model.adapters.ensure(AdapterRef(name, folder, "base", "1.0.0"))
    prompt = model.encode("Summarise the clause.")
    names = list(adapters)

    def request(adapter: str | None) -> float:
        params = SamplingParams(max_tokens=1, temperature=0, adapter=adapter)
        started = time.perf_counter()
        model.new_generator([prompt], params, len(prompt) + 1).generate_next_token()
        return (time.perf_counter() - started) * 1000

    times: dict[str, list[float]] = {"rotating": [], "one_adapter": [], "base": [], "set": []}
    for index in range(30 * repeats + 3):  # interleaved, so drift hits all alike
        rotating = request(names[index % len(names)])
        one = request(names[0])
        bare = request(None)
        options = og.GeneratorParams(model.model)
        options.set_search_options(max_length=8)
        generator = og.Generator(model.model, options)
        started = time.perf_counter()
        model.adapters.activate(generator, names[index % len(names)])
        activate = (time.perf_counter() - started) * 1000
        if index >= 3:  # warm-up
            for kind, value in zip(times, (rotating, one, bare, activate), strict=True):
                times[kind].append(value)
    return {kind: median(values) for kind, values in times.items()}


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-models-") as tmp:
        loads = on_demand(args.model, Path(tmp))
        embed = embeddings(args.encoder, args.repeats, Path(tmp))
        base, adapters, release_bytes = adapter_release(args.model, Path(tmp) / "lora")
        memory = adapter_memory(base, adapters, Path(tmp) / "lora")
        switch = adapter_switch(base, adapters, args.repeats)
    ratio = embed["api"] / embed["raw"]
    memory_ratio = memory["rss_base_with_adapters_mib"] / memory["rss_four_models_mib"]
    switch_ms = switch["rotating"] - switch["one_adapter"]
    bytes_ratio = release_bytes[ADAPTER_NAMES[0]] / release_bytes["base"]
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
            "rss_base_plus_3_adapters_mib": figure(memory["rss_base_with_adapters_mib"]),
            "rss_4_full_models_mib": figure(memory["rss_four_models_mib"]),
            "adapters_memory_vs_full_models": figure(
                memory_ratio,
                f"<= {ADAPTER_MEMORY_TARGET}",
                memory_ratio <= ADAPTER_MEMORY_TARGET,
            ),
            "pool_accounting_adapters_vs_full_models": figure(
                memory["pool_base_with_adapters"] / memory["pool_four_models"]
            ),
            "request_ms_rotating_adapters": figure(switch["rotating"]),
            "request_ms_one_adapter": figure(switch["one_adapter"]),
            "request_ms_bare_base": figure(switch["base"]),
            "set_active_adapter_ms": figure(switch["set"]),
            "adapter_switch_ms": figure(
                switch_ms, f"< {SWITCH_TARGET_MS}", switch_ms < SWITCH_TARGET_MS
            ),
            "adapter_release_bytes": figure(release_bytes[ADAPTER_NAMES[0]]),
            "base_release_bytes": figure(release_bytes["base"]),
            "adapter_vs_base_release_bytes": figure(bytes_ratio),
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

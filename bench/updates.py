"""Update benchmark: what an update costs a device, in bytes, hashing time and downtime.

One run, on the `small` test model (SmolLM2-360M's shape, int4), builds three releases of
one model and installs them in turn on a fresh device store through the agent's updater
(`UpdateManager.update`, reading a repository folder as from a USB stick):

1. 1.0.0, the first install: every chunk is fetched. It is the reference (1.0).
2. 1.1.0, a "fine-tune": layers 24..31 of 32 re-randomised with another seed, converted
   again. Only the chunks that changed should move (target <= 0.35 of the model).
3. 1.2.0, the fine-tune's weights with a tokenizer trained on another corpus slice: only
   the tokenizer files should move (target < 0.02).

It also measures the store's chunk verification against `sha256sum` on the same file,
the time from `update` to an active, healthy version, and, while `edge-agent serve`
follows the device's `active` pointer, how many streaming requests fail while it
switches to 1.1.0 (target 0).

Human-readable lines go out as the run goes; the last line is one JSON object with every
figure. Missed targets do not fail the run (it is a measurement); errors do.

    .venv/bin/python bench/updates.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import hashlib
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common import agent_server, figure, mb, report, wait_ready

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # run as a plain script from anywhere

if TYPE_CHECKING:  # the agent's modules load onnxruntime-genai: imported where needed
    from edge_agent.protocol import ReleaseManifest
    from edge_agent.store import InstalledVersion, ModelStore
    from edge_agent.updates.manager import Outcome
    from hub.registry.synthetic import Recipe

MODEL = "small"
# Bump when the way the variants are made changes, so old cached folders are not reused.
VARIANT_FORMAT = 1
FINE_TUNE_FIRST_LAYER = 24
FINE_TUNE_SEED = 4321
# Norm weights are vectors: a fine-tune nudges them rather than re-drawing them.
NORM_NOISE = 0.01
# The base tokenizer is trained on every top-level stdlib module (168 on 3.11); this slice
# is most of them, so the tokenizer differs throughout while the model's vocab size stays.
TOKENIZER_CORPUS_FILES = 150

CLIENTS = 3
BODY = {"model": MODEL, "prompt": "x", "max_tokens": 16, "ignore_eos": True, "stream": True}
WATCH_INTERVAL_S = 0.2
# Requests flow this long before the update, for a steady-state comparison.
STEADY_S = 3.0
# After the switch: the old version's grace second, its drain, and requests on the new one.
AFTER_SWITCH_S = 3.0
SWITCH_TIMEOUT_S = 300.0
ASSEMBLE_RUNS = 3


# --- the three model versions ----------------------------------------------------------


@dataclass(frozen=True)
class Versions:
    base: Path
    fine_tune: Path
    tokenizer: Path


def variant_dir(recipe: Recipe, variant: str, cache_dir: Path) -> Path:
    """The cached folder of one variant: named by everything that decides its bytes."""
    record = {
        "format": VARIANT_FORMAT,
        "recipe": recipe.digest(),
        "variant": variant,
        "fine_tune_first_layer": FINE_TUNE_FIRST_LAYER,
        "fine_tune_seed": FINE_TUNE_SEED,
        "norm_noise": NORM_NOISE,
        "tokenizer_corpus_files": TOKENIZER_CORPUS_FILES,
    }
    digest = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir / f"bench-updates-{recipe.name}-{variant}-{digest}"


def fine_tune(src: Path, dst: Path) -> None:
    """`src` with the weights of the last layers re-drawn under another seed."""
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(src)
    generator = torch.Generator().manual_seed(FINE_TUNE_SEED)
    std = float(model.config.initializer_range)
    with torch.no_grad():
        for layer in model.model.layers[FINE_TUNE_FIRST_LAYER:]:
            for param in layer.parameters():
                if param.dim() >= 2:
                    param.normal_(0.0, std, generator=generator)
                else:
                    param.add_(torch.randn(param.shape, generator=generator), alpha=NORM_NOISE)
    # The tokenizer files come along unchanged; save_pretrained writes weights and config.
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors", "config.json"))
    model.save_pretrained(dst, safe_serialization=True)


def retokenized(recipe: Recipe, src: Path, dst: Path) -> None:
    """`src`'s weights with a tokenizer trained on another slice of the corpus."""
    from hub.registry import synthetic

    dst.mkdir()
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        if (src / name).is_file():
            # Links: nothing below writes these files, and 1.4 GB is not copied.
            os.link(src / name, dst / name)
    other = dataclasses.replace(recipe, tokenizer_corpus_files=TOKENIZER_CORPUS_FILES)
    synthetic.write_tokenizer(other, dst)


def build_versions(recipe: Recipe) -> Versions:
    """The base test model and its two variants, converted once and cached."""
    from hub.registry import synthetic
    from hub.registry.convert import convert_hf_folder

    def step(message: str) -> None:
        print(f"models: {message}", flush=True)

    cache = synthetic.default_cache_dir()
    fine_dir = variant_dir(recipe, "fine-tune", cache)
    tok_dir = variant_dir(recipe, "tokenizer", cache)

    def cached() -> bool:
        return all((d / "genai_config.json").is_file() for d in (fine_dir, tok_dir))

    if not (cached() and (synthetic.model_dir_for(recipe) / "genai_config.json").is_file()):
        from transformers.utils import logging as transformers_logging

        # Something gets built: the model writers' progress bars would garble the log.
        transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]

    versions = Versions(synthetic.build(recipe, on_step=step), fine_dir, tok_dir)
    if cached():
        return versions
    lock_path = cache / f".bench-updates-{recipe.name}.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run may be building the same variants
        if cached():
            return versions
        with tempfile.TemporaryDirectory(prefix=".bench-updates.", dir=cache) as tmp:
            work = Path(tmp)
            hf_base, hf_fine, hf_tok = work / "hf-base", work / "hf-fine-tune", work / "hf-tok"
            started = time.perf_counter()
            # The cache keeps only converted folders; recipes are deterministic, so the
            # Hugging Face folder comes back byte for byte (the tokenizer variant's
            # model.onnx.data equal to the fine-tune's shows it).
            step("re-creating the base Hugging Face folder (tokenizer, random weights)")
            synthetic.write_tokenizer(recipe, hf_base)
            synthetic.write_random_weights(recipe, hf_base)
            step(
                f"fine-tune: re-drawing layers {FINE_TUNE_FIRST_LAYER}.."
                f"{recipe.shape.num_hidden_layers - 1} with seed {FINE_TUNE_SEED}"
            )
            fine_tune(hf_base, hf_fine)
            shutil.rmtree(hf_base)
            made = [(fine_dir, hf_fine, "fine-tune")]
            step(f"new tokenizer: trained on the first {TOKENIZER_CORPUS_FILES} modules")
            retokenized(recipe, hf_fine, hf_tok)
            made.append((tok_dir, hf_tok, "tokenizer"))
            for target, hf_dir, variant in made:
                if (target / "genai_config.json").is_file():
                    continue
                step(f"converting the {variant} variant to {recipe.quant.precision} ONNX ...")
                converted = convert_hf_folder(hf_dir, work / f"onnx-{variant}", recipe.quant)
                record = {
                    "recipe": recipe.name,
                    "digest": recipe.digest(),
                    "variant": variant,
                    "target": target.name,
                }
                (converted / "test_model.json").write_text(json.dumps(record, indent=2) + "\n")
                shutil.rmtree(target, ignore_errors=True)
                converted.replace(target)
            step(f"variants built in {time.perf_counter() - started:.0f} s")
    return versions


# --- bytes: where the changed chunks lie ---------------------------------------------


Span = tuple[int, int]  # [start, end) byte offsets within a file


def add_span(spans: list[Span], start: int, end: int) -> None:
    """Append [start, end), merged with the last span when they touch."""
    if spans and spans[-1][1] == start:
        spans[-1] = (spans[-1][0], end)
    else:
        spans.append((start, end))


def describe_spans(spans: list[Span], size: int, most: int = 4) -> str:
    shown = [
        f"{mb(a):.2f}..{mb(b):.2f} MB ({a / size:.1%}..{b / size:.1%})" for a, b in spans[:most]
    ]
    more = f" and {len(spans) - most} more" if len(spans) > most else ""
    return ", ".join(shown) + more


@dataclass
class FileDelta:
    path: str
    size: int
    new_bytes: int = 0
    spans: list[Span] = field(default_factory=list)  # where the new chunks lie


def deltas(installed: list[ReleaseManifest], new: ReleaseManifest) -> list[FileDelta]:
    """Per file of `new`: the bytes of its chunks that no installed release holds."""
    held = {sha for manifest in installed for sha in manifest.unique_chunks()}
    found: list[FileDelta] = []
    for entry in new.files:
        delta = FileDelta(entry.path, entry.size)
        offset = 0
        for chunk in entry.chunks:
            if chunk.sha256 not in held:
                held.add(chunk.sha256)  # a chunk that repeats is fetched once
                delta.new_bytes += chunk.size
                add_span(delta.spans, offset, offset + chunk.size)
            offset += chunk.size
        found.append(delta)
    return found


def changed_tensors(old_dir: Path, new_dir: Path) -> tuple[int, list[Span]]:
    """Bytes of model.onnx.data held by tensors whose bytes differ, and where they lie.

    The floor for any delta at tensor granularity: what a perfect chunker would move.
    """
    import onnx

    def layout(folder: Path) -> dict[str, Span]:
        graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
        places = {}
        for tensor in graph.initializer:
            info = {item.key: item.value for item in tensor.external_data}
            if "length" in info:
                offset = int(info.get("offset", 0))
                places[tensor.name] = (offset, offset + int(info["length"]))
        return places

    old, new = layout(old_dir), layout(new_dir)
    changed = 0
    spans: list[Span] = []
    with (
        (old_dir / "model.onnx.data").open("rb") as a,
        (new_dir / "model.onnx.data").open("rb") as b,
    ):
        for name, (start, end) in sorted(new.items(), key=lambda item: item[1]):
            if name in old and old[name][1] - old[name][0] == end - start:
                a.seek(old[name][0])
                b.seek(start)
                if a.read(end - start) == b.read(end - start):
                    continue
            changed += end - start
            add_span(spans, start, end)
    return changed, spans


def producer(folder: Path) -> str:
    """The model builder's version that model.onnx records."""
    import onnx

    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    return f"{model.producer_name} {model.producer_version}"


# --- the updater, instrumented ---------------------------------------------------------


@dataclass
class UpdateRun:
    version: str
    outcome: Outcome
    seconds: float
    transferred: int  # every byte read from the repository: metadata, manifest, chunks
    phases: dict[str, float]


def run_update(device: Path, repo_root: Path, version: str) -> UpdateRun:
    """`UpdateManager.update` as the agent runs it, with its phases timed from outside."""
    from edge_agent.store import ModelStore
    from edge_agent.updates.fetchers import FolderFetcher, fetcher_for
    from edge_agent.updates.health import check_model
    from edge_agent.updates.manager import UpdateManager
    from edge_agent.updates.source import ReleaseSource

    marks: dict[str, float] = {}

    class TimedStore(ModelStore):
        def assemble(self, manifest: ReleaseManifest) -> InstalledVersion:
            marks["assemble_start"] = time.perf_counter()
            try:
                return super().assemble(manifest)
            finally:
                marks["assemble_end"] = time.perf_counter()

    class CountingFetcher(FolderFetcher):
        def __init__(self) -> None:
            super().__init__()
            self.transferred = 0

        def _fetch(self, url: str) -> Iterator[bytes]:
            blocks = super()._fetch(url)  # eager: a missing file must raise here, not later
            return self._counted(blocks)

        def _counted(self, blocks: Iterator[bytes]) -> Iterator[bytes]:
            for block in blocks:
                self.transferred += len(block)
                yield block

    def timed_check(path: Path) -> None:
        marks["health_start"] = time.perf_counter()
        try:
            check_model(path)
        finally:
            marks["health_end"] = time.perf_counter()

    base, _ = fetcher_for(str(repo_root))
    fetcher = CountingFetcher()
    manager = UpdateManager(
        TimedStore(device), device / "update-state.json", health_check=timed_check
    )
    started = time.perf_counter()
    with ReleaseSource(base, device / "trust", fetcher) as source:
        outcome = manager.update(source, MODEL, version)
    seconds = time.perf_counter() - started
    if not outcome.changed or outcome.version != version:
        raise RuntimeError(f"update to {version} did not install: {outcome}")
    phases = {
        "check_and_download_s": marks["assemble_start"] - started,
        "assemble_s": marks["assemble_end"] - marks["assemble_start"],
        "health_check_s": marks["health_end"] - marks["health_start"],
    }
    phases["activate_commit_gc_s"] = seconds - sum(phases.values())
    return UpdateRun(version, outcome, seconds, fetcher.transferred, phases)


def report_update(label: str, run: UpdateRun, manifest: ReleaseManifest) -> None:
    fetched = run.outcome.fetched_bytes
    phases = ", ".join(
        f"{k.removesuffix('_s').replace('_', ' ')} {v:.2f} s" for k, v in run.phases.items()
    )
    print(
        f"{label}: {run.version} active and healthy in {run.seconds:.2f} s ({phases}); "
        f"fetched {mb(fetched):.2f} MB of chunks = {fetched / manifest.total_bytes:.4f} of the "
        f"model ({mb(manifest.total_bytes):.1f} MB), reused {mb(run.outcome.reused_bytes):.1f} MB; "
        f"{mb(run.transferred - fetched):.3f} MB of metadata and manifest besides"
    )


def report_deltas(label: str, found: list[FileDelta]) -> None:
    for delta in found:
        if delta.new_bytes:
            where = ""
            if delta.size > 1 << 20:  # where in a large file; a small one is one chunk
                where = f"; new chunks at {describe_spans(delta.spans, delta.size)}"
            print(
                f"{label}:   {delta.path}: {mb(delta.new_bytes):.2f} of "
                f"{mb(delta.size):.2f} MB new{where}"
            )


# --- verification throughput -----------------------------------------------------------


@dataclass
class Timings:
    sha256sum: list[float] = field(default_factory=list)
    verify: list[float] = field(default_factory=list)
    verify_and_file: list[float] = field(default_factory=list)


def measure_verification(
    store: ModelStore, installed: InstalledVersion, repeats: int
) -> tuple[int, Timings]:
    """The store's chunk verification and `sha256sum`, on the same warm file.

    Measured: `ModelStore._read_chunk` over every chunk of model.onnx.data, which is the
    read + sha256 check that `assemble` runs on each chunk, here served from the installed
    version's file. `assemble` also hashes the whole file as it goes (`verify_and_file`
    adds that) and then writes and fsyncs the copy; it is timed apart, in
    `measure_assemble`, since the disk dominates it.
    """
    entry = max(installed.manifest.files, key=lambda e: e.size)
    path = installed.path / entry.path
    local = store._local_index()  # what assemble builds: chunk -> where a file holds it
    holders = {local[c.sha256].path for c in entry.chunks}
    if holders != {path}:
        raise RuntimeError(f"chunks of {entry.path} located in {holders}, expected {path}")

    def verify() -> None:
        for chunk in entry.chunks:
            store._read_chunk(chunk.sha256, chunk.size, local)

    def verify_and_file() -> None:
        digest = hashlib.sha256()
        for chunk in entry.chunks:
            digest.update(store._read_chunk(chunk.sha256, chunk.size, local))
        if digest.hexdigest() != entry.sha256:
            raise RuntimeError(f"{path} does not match its manifest hash")

    def sha256sum() -> None:
        answer = subprocess.run(
            ["sha256sum", str(path)], check=True, capture_output=True, text=True
        )
        if answer.stdout.split()[0] != entry.sha256:
            raise RuntimeError(f"sha256sum disagrees with the manifest on {path}")

    def clock(run: Callable[[], None]) -> float:
        started = time.perf_counter()
        run()
        return time.perf_counter() - started

    for run in (sha256sum, verify, verify_and_file):
        run()  # warm-up: the file into the page cache, the code paths loaded
    timings = Timings()
    for _ in range(repeats):  # interleaved, so drifting load hits all three alike
        timings.sha256sum.append(clock(sha256sum))
        timings.verify.append(clock(verify))
        timings.verify_and_file.append(clock(verify_and_file))
    return entry.size, timings


def measure_assemble(store: ModelStore, installed: InstalledVersion, scratch: Path) -> list[float]:
    """Seconds of `ModelStore.assemble` building a version from an installed one's files.

    A scratch store holds hard links to the installed version, and assembles the same
    manifest under another version number: every chunk is found locally, read, checked,
    written and fsynced, as in an update whose chunks are all reused.
    """
    from edge_agent.store import ModelStore

    source = scratch / "models" / installed.model / "versions" / installed.version
    source.mkdir(parents=True)
    for item in installed.path.iterdir():
        os.link(item, source / item.name)
    scratch_store = ModelStore(scratch)
    probe = installed.manifest.model_copy(update={"version": "0.0.1"})
    built = scratch / "models" / installed.model / "versions" / "0.0.1"
    seconds = []
    for _ in range(ASSEMBLE_RUNS):
        started = time.perf_counter()
        scratch_store.assemble(probe)
        seconds.append(time.perf_counter() - started)
        shutil.rmtree(built)
    shutil.rmtree(scratch)
    return seconds


# --- the API across a switch -----------------------------------------------------------


@dataclass(frozen=True)
class Request:
    started: float
    ended: float
    ok: bool
    detail: str


class Load:
    """Clients streaming short completions back to back until stopped."""

    def __init__(self, base_url: str, clients: int) -> None:
        self.base_url = base_url
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.requests: list[Request] = []
        self.chunk_times: list[float] = []  # when any client received a data chunk
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(60)

    def _client(self) -> None:
        import httpx

        with httpx.Client(base_url=self.base_url, timeout=60.0) as http:
            while not self.stop_event.is_set():
                started = time.perf_counter()
                status, lines, detail = 0, [], ""
                try:
                    with http.stream("POST", "/v1/completions", json=BODY) as response:
                        status = response.status_code
                        for line in response.iter_lines():
                            if not line:
                                continue
                            lines.append(line)
                            if line.startswith("data: {"):
                                with self.lock:
                                    self.chunk_times.append(time.perf_counter())
                except httpx.HTTPError as exc:
                    detail = f"{type(exc).__name__}: {exc}"
                # As the live-switch test judges a request: complete, and no error event.
                ok = (
                    not detail
                    and status == 200
                    and "data: [DONE]" in lines
                    and not any(line.startswith('data: {"error"') for line in lines)
                )
                if not ok and not detail:
                    detail = f"HTTP {status}: {lines[-3:]}"
                with self.lock:
                    self.requests.append(Request(started, time.perf_counter(), ok, detail))

    def longest_stall(self, start: float, end: float) -> float:
        """Longest time within [start, end] in which no client received anything."""
        with self.lock:
            moments = sorted(t for t in self.chunk_times if start <= t <= end)
        points = [start, *moments, end]
        return max(b - a for a, b in itertools.pairwise(points))

    def within(self, start: float, end: float) -> list[Request]:
        """Requests that were in flight at any moment of [start, end]."""
        with self.lock:
            return [r for r in self.requests if r.ended >= start and r.started <= end]


class ServedPath:
    """Polls /readyz and notes when the server first reports serving `version`."""

    def __init__(self, base_url: str, version: str) -> None:
        self.base_url = base_url
        self.suffix = f"/{version}"
        self.seen_at: float | None = None
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        import httpx

        with httpx.Client(base_url=self.base_url, timeout=5.0) as client:
            while not self.stop_event.is_set():
                try:
                    models = client.get("/readyz").json()["models"]
                    if str(models[0].get("path", "")).endswith(self.suffix):
                        self.seen_at = time.perf_counter()
                        return
                except (httpx.HTTPError, ValueError, KeyError, IndexError):
                    pass  # the next poll answers
                time.sleep(0.05)

    def wait(self, timeout: float) -> float | None:
        self.thread.join(timeout)
        self.stop_event.set()
        return self.seen_at


@dataclass
class Switch:
    update: UpdateRun
    update_started: float
    served_at: float | None
    steady: list[Request]
    across: list[Request]
    steady_stall_s: float
    switch_stall_s: float
    server_switches: int


def device_env(device: Path, workdir: Path) -> dict[str, str]:
    """The environment for `edge-agent serve` on the installed model, following `active`."""
    config = workdir / "agent.toml"
    config.write_text("")  # an explicit empty file: no config of this machine leaks in
    return {
        **os.environ,
        "EDGE_AGENT_CONFIG": str(config),
        "EDGE_AGENT__STORE__DIR": str(device),
        "EDGE_AGENT__UPDATES__WATCH_INTERVAL_SECONDS": str(WATCH_INTERVAL_S),
    }


def update_under_load(device: Path, repo_root: Path, version: str, workdir: Path) -> Switch:
    with agent_server(MODEL, workdir, env=device_env(device, workdir)) as server:
        _, ready = wait_ready(server, poll_s=0.05)
        print(
            f"api: serving {ready['models'][0].get('path')}; {CLIENTS} clients streaming "
            f"{BODY['max_tokens']}-token completions; update to {version} in {STEADY_S:.0f} s",
            flush=True,
        )
        load = Load(server.base_url, CLIENTS)
        load.start()
        steady_start = time.perf_counter()
        time.sleep(STEADY_S)
        update_started = time.perf_counter()
        served = ServedPath(server.base_url, version)
        try:
            run = run_update(device, repo_root, version)
            served_at = served.wait(SWITCH_TIMEOUT_S)
            time.sleep(AFTER_SWITCH_S)
        finally:
            stop_at = time.perf_counter()
            load.stop()
        switches = server.log_tail(1 << 20).count("now serving")
        if served_at is None:
            print(f"api: the server never reported {version}; its log:\n{server.log_tail()}")
        return Switch(
            update=run,
            update_started=update_started,
            served_at=served_at,
            steady=load.within(steady_start, update_started),
            across=load.within(update_started, stop_at),
            steady_stall_s=load.longest_stall(steady_start, update_started),
            switch_stall_s=load.longest_stall(update_started, stop_at),
            server_switches=switches,
        )


# --- the run -----------------------------------------------------------------------------


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    from edge_agent.store import ModelStore
    from edge_agent.updates.source import pin_root
    from hub.registry import synthetic
    from hub.registry.repository import ReleaseRepository

    recipe = synthetic.RECIPES[MODEL]
    print(f"models: building or reusing the '{MODEL}' test model and its two variants", flush=True)
    versions = build_versions(recipe)
    for label, folder in dataclasses.asdict(versions).items():
        print(f"models: {label}: {folder}")

    with tempfile.TemporaryDirectory(prefix="edge-bench-updates-") as tmp:
        work = Path(tmp)
        repo = ReleaseRepository.create(work / "repo", work / "keys")
        started = time.perf_counter()
        releases = {
            "1.0.0": repo.publish(versions.base, MODEL, "1.0.0"),
            "1.1.0": repo.publish(versions.fine_tune, MODEL, "1.1.0"),
            "1.2.0": repo.publish(versions.tokenizer, MODEL, "1.2.0"),
        }
        print(
            f"hub: published 1.0.0 (base), 1.1.0 (fine-tune), 1.2.0 (new tokenizer) in "
            f"{time.perf_counter() - started:.1f} s; "
            + ", ".join(
                f"{v}: {len(m.unique_chunks())} chunks, {mb(m.total_bytes):.1f} MB"
                for v, m in releases.items()
            )
        )
        device = work / "device"
        pin_root(device / "trust", repo.trusted_root_path())

        # 1a. First install: the reference, every chunk fetched.
        print("update: first install of 1.0.0 ...", flush=True)
        install = run_update(device, repo.root, "1.0.0")
        report_update("install", install, releases["1.0.0"])

        # 2. Verification throughput, while only 1.0.0 is installed: every chunk of its
        # model.onnx.data is located in that one file, the file sha256sum reads.
        store = ModelStore(device)
        installed = store.version(MODEL, "1.0.0")
        print(
            f"verify: store chunk check vs sha256sum on {installed.path}/model.onnx.data, "
            f"{args.repeats} interleaved runs after a warm-up ...",
            flush=True,
        )
        file_bytes, timings = measure_verification(store, installed, args.repeats)
        rates = {
            name: [file_bytes / s / 1e6 for s in values]
            for name, values in dataclasses.asdict(timings).items()
        }
        best = {name: max(values) for name, values in rates.items()}
        print(
            f"verify: store chunk check {best['verify']:.0f} MB/s, with the whole-file hash "
            f"assemble adds {best['verify_and_file']:.0f} MB/s, sha256sum {best['sha256sum']:.0f} "
            "MB/s (best of each; runs: "
            + "; ".join(f"{k} " + ", ".join(f"{r:.0f}" for r in v) for k, v in rates.items())
            + ")"
        )
        assemble_s = measure_assemble(store, installed, work / "assemble-store")
        assemble_rate = installed.manifest.total_bytes / min(assemble_s) / 1e6
        print(
            f"verify: store.assemble of all {mb(installed.manifest.total_bytes):.0f} MB from "
            f"local chunks (read, check, write, fsync): {assemble_rate:.0f} MB/s, best of "
            f"{ASSEMBLE_RUNS} (" + ", ".join(f"{s:.2f} s" for s in assemble_s) + ")"
        )

        # 1b and 3. The fine-tune, installed while the API serves and follows `active`.
        print("update: fine-tune 1.1.0 while the API serves 1.0.0 ...", flush=True)
        fine_delta = deltas([releases["1.0.0"]], releases["1.1.0"])
        switch = update_under_load(device, repo.root, "1.1.0", work)
        fine = switch.update
        report_update("fine-tune", fine, releases["1.1.0"])
        report_deltas("fine-tune", fine_delta)
        tensor_bytes, tensor_spans = changed_tensors(versions.base, versions.fine_tune)
        data_size = (versions.base / "model.onnx.data").stat().st_size
        print(
            f"fine-tune:   tensors that differ hold {mb(tensor_bytes):.2f} MB of model.onnx.data "
            f"({tensor_bytes / data_size:.4f} of it), what a perfect chunker would move; they "
            f"lie at {describe_spans(tensor_spans, data_size)}"
        )
        builders = {producer(versions.base), producer(versions.fine_tune)}
        if len(builders) > 1:
            print(
                "fine-tune:   note: the cached base model and the variants come from different "
                f"model builder builds ({', '.join(sorted(builders))}); model.onnx records it, "
                "so it differs for that reason alone"
            )
        failed = [r for r in switch.across if not r.ok]
        served_after = (
            None if switch.served_at is None else switch.served_at - switch.update_started
        )
        steady_durations = [r.ended - r.started for r in switch.steady]
        across_durations = [r.ended - r.started for r in switch.across]
        print(
            f"api: {len(switch.across)} requests in flight from the update's start to the end "
            f"({AFTER_SWITCH_S:.0f} s after the switch), {len(failed)} failed; server reported "
            + ("never" if served_after is None else f"{served_after:.2f} s after the update began")
            + f" that it serves 1.1.0; longest time without a streamed chunk "
            f"{switch.switch_stall_s:.2f} s (steady state before: {switch.steady_stall_s:.2f} s); "
            f"request time median {statistics.median(across_durations):.2f} s, max "
            f"{max(across_durations):.2f} s (steady: {statistics.median(steady_durations):.2f} s)"
        )
        for request in failed[:5]:
            print(f"api:   failed: {request.detail}")

        # 1c. The new tokenizer, with the fine-tune's weights already on the device.
        print("update: new tokenizer 1.2.0 ...", flush=True)
        tok_delta = deltas([releases["1.0.0"], releases["1.1.0"]], releases["1.2.0"])
        tokenizer = run_update(device, repo.root, "1.2.0")
        report_update("tokenizer", tokenizer, releases["1.2.0"])
        report_deltas("tokenizer", tok_delta)

    fractions = {
        "install": install.outcome.fetched_bytes / releases["1.0.0"].total_bytes,
        "fine_tune": fine.outcome.fetched_bytes / releases["1.1.0"].total_bytes,
        "tokenizer": tokenizer.outcome.fetched_bytes / releases["1.2.0"].total_bytes,
    }
    verify_ratio = best["verify"] / best["sha256sum"]
    figures = {
        "full_model_bytes": figure(releases["1.0.0"].total_bytes),
        "install_fetched_bytes": figure(install.outcome.fetched_bytes),
        "install_fraction": figure(fractions["install"]),
        "install_transferred_bytes": figure(install.transferred),
        "fine_tune_fetched_bytes": figure(fine.outcome.fetched_bytes),
        "fine_tune_fraction": figure(
            fractions["fine_tune"], "<= 0.35", fractions["fine_tune"] <= 0.35
        ),
        "fine_tune_transferred_bytes": figure(fine.transferred),
        "fine_tune_changed_tensor_fraction": figure(tensor_bytes / data_size),
        "tokenizer_fetched_bytes": figure(tokenizer.outcome.fetched_bytes),
        "tokenizer_fraction": figure(
            fractions["tokenizer"], "< 0.02", fractions["tokenizer"] < 0.02
        ),
        "tokenizer_transferred_bytes": figure(tokenizer.transferred),
        "sha256sum_mb_s": figure(best["sha256sum"]),
        "verify_mb_s": figure(best["verify"]),
        "verify_vs_sha256sum": figure(verify_ratio, ">= 0.9", verify_ratio >= 0.9),
        "verify_with_file_hash_mb_s": figure(best["verify_and_file"]),
        "assemble_mb_s": figure(assemble_rate),
        "assemble_vs_sha256sum": figure(assemble_rate / best["sha256sum"]),
        "install_to_active_s": figure(install.seconds),
        "fine_tune_to_active_under_load_s": figure(fine.seconds),
        "tokenizer_to_active_s": figure(tokenizer.seconds),
        "switch_failed_requests": figure(len(failed), "== 0", not failed),
        "switch_total_requests": figure(len(switch.across)),
        "switch_served_after_s": figure(served_after),
        "switch_longest_stall_s": figure(switch.switch_stall_s),
        "steady_longest_stall_s": figure(switch.steady_stall_s),
        "switch_max_request_s": figure(max(across_durations)),
        "steady_median_request_s": figure(statistics.median(steady_durations)),
    }
    return {
        "figures": figures,
        "reference": "bytes: the first install (the full model); hashing: sha256sum, same file",
        "model": {
            "recipe": MODEL,
            "dirs": {k: str(v) for k, v in dataclasses.asdict(versions).items()},
            "fine_tune": {"first_layer": FINE_TUNE_FIRST_LAYER, "seed": FINE_TUNE_SEED},
            "tokenizer_corpus_files": TOKENIZER_CORPUS_FILES,
        },
        "settings": {
            "repeats": args.repeats,
            "assemble_runs": ASSEMBLE_RUNS,
            "clients": CLIENTS,
            "body": BODY,
            "watch_interval_s": WATCH_INTERVAL_S,
            "server_switches": switch.server_switches,
        },
        "samples": {
            "phases_s": {
                run.version: {k: round(v, 3) for k, v in run.phases.items()}
                for run in (install, fine, tokenizer)
            },
            "new_bytes_by_file": {
                "1.1.0": {d.path: d.new_bytes for d in fine_delta},
                "1.2.0": {d.path: d.new_bytes for d in tok_delta},
            },
            "hash_mb_s": {k: [round(r, 1) for r in v] for k, v in rates.items()},
            "assemble_s": [round(s, 3) for s in assemble_s],
            "failed_requests": [r.detail for r in failed[:10]],
        },
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each hashing kind")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report(benchmark(args))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # before the health check loads it
    sys.exit(main())

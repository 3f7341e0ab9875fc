"""Inference benchmark: the agent's streaming HTTP API against plain onnxruntime-genai.

One run measures, on a synthetic test model (random weights, int4):

1. the reference: a plain onnxruntime-genai generate loop with the agent's settings, in a
   child process of its own so that its memory is measured alone;
2. the same generation streamed through `edge-agent serve`: readiness, time to first
   token, decode speed and memory, each set against the reference;
3. the machine's memory-read bandwidth, and from it the decode ceiling of the model;
4. aggregate throughput of four clients streaming at once.

Human-readable lines go out as the run goes; the last line is one JSON object with every
figure. Missed targets do not fail the run (it is a measurement); errors do.

    .venv/bin/python bench/inference.py [--model small|tiny] [--repeats 5] [--new-tokens 128]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common import (
    agent_server,
    cpu_busy_seconds,
    figure,
    median,
    mib,
    own_cpu_seconds,
    proc_status_kib,
    report,
    wait_ready,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # run as a plain script from anywhere

PROMPT_TOKENS = 64
CLIENTS = 4
BANDWIDTH_BYTES = 1 << 30
# Pause between timed runs: lets the previous run's worker threads stop spinning.
SETTLE_S = 0.2

# Python-ish source for the prompt; long enough for 64 tokens under any test tokenizer.
PROMPT_SOURCE = '''\
import json
from pathlib import Path


class Inventory:
    """Items on the shelf, counted by name."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.items: dict[str, int] = {}

    def load(self) -> None:
        if self.path.exists():
            self.items = json.loads(self.path.read_text())

    def add(self, name: str, count: int = 1) -> int:
        self.items[name] = self.items.get(name, 0) + count
        return self.items[name]

    def save(self) -> None:
        self.path.write_text(json.dumps(self.items, indent=2, sort_keys=True))


def main() -> None:
    inventory = Inventory(Path("inventory.json"))
    inventory.load()
    for name in ("bolts", "nuts", "washers", "screws"):
        print(name, inventory.add(name, 10))
    inventory.save()
'''


# --- the model's size ------------------------------------------------------------------


def weight_bytes(model_dir: Path) -> int:
    # Decode reads every weight once per token: the graph plus its external data.
    return sum(
        (model_dir / name).stat().st_size
        for name in ("model.onnx", "model.onnx.data")
        if (model_dir / name).is_file()
    )


# --- 1. reference: plain onnxruntime-genai, in a child process -------------------------


def choose_prompt(tokenizer: Any, count: int) -> tuple[list[int], str]:
    """Token ids and a text that encodes to exactly those ids.

    Cutting an encoding at `count` and decoding may not re-encode to the same ids (merges
    across the cut), so look for a prefix whose text round-trips to exactly `count` ids.
    """
    full = [int(t) for t in tokenizer.encode(PROMPT_SOURCE)]
    if len(full) < count + 16:
        raise RuntimeError(f"prompt source encodes to only {len(full)} tokens; need {count}")
    for cut in range(count, count + 16):
        text = str(tokenizer.decode(full[:cut]))
        ids = [int(t) for t in tokenizer.encode(text)]
        if len(ids) == count:
            return ids, text
    raise RuntimeError(f"no prefix of the prompt source re-encodes to exactly {count} tokens")


RESULT_PREFIX = "RESULT "


@dataclass(frozen=True)
class RawRun:
    ttft_ms: float
    decode_tok_s: float
    tokens: int


def raw_child(model_dir: Path, new_tokens: int) -> None:
    """Runs in the child: load like the agent does, then generate on each `run` line.

    Answers are `RESULT <json>` lines on stdout; anything else there is ignored by the parent.
    """
    import numpy as np

    # Sets ORT_DISABLE_TELEMETRY before the native library loads, as the agent does.
    from edge_agent.runtime._og import og
    from edge_agent.runtime.machine import usable_cores

    def reply(payload: dict[str, Any]) -> None:
        print(RESULT_PREFIX + json.dumps(payload), flush=True)

    threads = usable_cores()
    started = time.perf_counter()
    config = og.Config(str(model_dir))
    config.clear_providers()
    options = {"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}
    config.overlay(json.dumps(options))
    model = og.Model(config)
    tokenizer = og.Tokenizer(model)
    load_s = time.perf_counter() - started
    rss_after_load = proc_status_kib("self", "VmRSS")

    prompt_ids, prompt_text = choose_prompt(tokenizer, PROMPT_TOKENS)
    prompt = np.asarray(prompt_ids, dtype=np.int32)
    total = len(prompt_ids) + new_tokens

    def once() -> RawRun:
        params = og.GeneratorParams(model)
        # min_length = max_length: a random model may emit end-of-sequence at once.
        params.set_search_options(max_length=total, min_length=total, do_sample=False, batch_size=1)
        generator = og.Generator(model, params)
        stream = tokenizer.create_stream()
        sent = time.perf_counter()
        generator.append_tokens(prompt)  # the prefill runs here in 0.18
        generator.generate_next_token()
        stream.decode(int(generator.get_next_tokens()[0]))
        first = time.perf_counter()
        produced = 1
        while not generator.is_done():
            generator.generate_next_token()
            stream.decode(int(generator.get_next_tokens()[0]))
            produced += 1
        last = time.perf_counter()
        return RawRun((first - sent) * 1000, (produced - 1) / (last - first), produced)

    reply(
        {
            "threads": threads,
            "load_s": load_s,
            "prompt_ids": prompt_ids,
            "prompt_text": prompt_text,
            "rss_after_load_kib": rss_after_load,
        }
    )
    for line in sys.stdin:
        command = line.strip()
        if command == "run":
            reply(asdict(once()))
        elif command == "memory":
            reply(
                {
                    "rss_kib": proc_status_kib("self", "VmRSS"),
                    "hwm_kib": proc_status_kib("self", "VmHWM"),
                }
            )
        elif command == "quit":
            return


class RawReference:
    """The reference generator in a child process of its own, driven line by line.

    A process of its own keeps its memory apart from everything else; keeping it alive lets
    its runs alternate with the API's, so drifting load on the machine hits both alike.
    """

    def __init__(self, model_dir: Path, new_tokens: int, log_path: Path) -> None:
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--raw-child",
            "--model-dir",
            str(model_dir),
            "--new-tokens",
            str(new_tokens),
        ]
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True
            )
        self.loaded = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith(RESULT_PREFIX):
                return dict(json.loads(line[len(RESULT_PREFIX) :]))
        self.process.wait()
        tail = self.log_path.read_text(errors="replace")[-4000:]
        raise RuntimeError(f"reference child exited with {self.process.returncode}:\n{tail}")

    def _ask(self, command: str) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self._read()

    def run(self) -> RawRun:
        return RawRun(**self._ask("run"))

    def memory_kib(self) -> tuple[int, int]:
        answer = self._ask("memory")
        return int(answer["rss_kib"]), int(answer["hwm_kib"])

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                assert self.process.stdin is not None
                self.process.stdin.write("quit\n")
                self.process.stdin.close()
                self.process.wait(timeout=15)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait(timeout=15)


@contextmanager
def raw_reference(model_dir: Path, new_tokens: int, workdir: Path) -> Iterator[RawReference]:
    reference = RawReference(model_dir, new_tokens, workdir / "reference.log")
    try:
        yield reference
    finally:
        reference.close()


# --- 2 and 4. the agent's streaming HTTP API --------------------------------------------


@dataclass
class StreamResult:
    sent: float
    first_text: float | None = None
    last_chunk: float | None = None
    chunks_with_text: int = 0
    completion_tokens: int | None = None
    finish_reason: str | None = None
    text_parts: list[str] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        # The usage chunk is exact; counting text chunks is the fallback.
        return (
            self.completion_tokens if self.completion_tokens is not None else self.chunks_with_text
        )

    @property
    def ttft_ms(self) -> float:
        assert self.first_text is not None
        return (self.first_text - self.sent) * 1000

    @property
    def decode_tok_s(self) -> float:
        assert self.first_text is not None and self.last_chunk is not None
        return (self.tokens - 1) / (self.last_chunk - self.first_text)


class ApiRejected(RuntimeError):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:500]}")
        self.status = status


def stream_completion(client: Any, body: dict[str, Any]) -> StreamResult:
    result = StreamResult(sent=time.perf_counter())
    with client.stream("POST", "/v1/completions", json=body) as response:
        if response.status_code != 200:
            raise ApiRejected(response.status_code, response.read().decode(errors="replace"))
        for line in response.iter_lines():
            if not line.startswith("data:"):
                continue  # blank separators, comments, event names
            payload = line[5:].strip()
            if payload == "[DONE]":
                break
            now = time.perf_counter()
            chunk = json.loads(payload)
            usage = chunk.get("usage")
            if usage and usage.get("completion_tokens") is not None:
                result.completion_tokens = int(usage["completion_tokens"])
            for choice in chunk.get("choices") or []:
                # The last token's chunk may carry no text (an incomplete UTF-8 sequence is
                # held back), so the decode window ends at the last chunk with a choice.
                result.last_chunk = now
                if choice.get("finish_reason"):
                    result.finish_reason = choice["finish_reason"]
                text = choice.get("text") or ""
                if text:
                    result.text_parts.append(text)
                    result.chunks_with_text += 1
                    if result.first_text is None:
                        result.first_text = now
    if result.first_text is None:
        raise RuntimeError("the stream ended without any text")
    return result


def completion_body(model_id: str, prompt: list[int] | str, new_tokens: int) -> dict[str, Any]:
    return {
        "model": model_id,
        "prompt": prompt,
        "max_tokens": new_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }


def concurrent_run(
    base_url: str, body: dict[str, Any], clients: int
) -> tuple[float, list[StreamResult]]:
    """Wall seconds for `clients` simultaneous streams, and each one's stream."""
    import httpx

    barrier = threading.Barrier(clients + 1)
    results: list[StreamResult | BaseException | None] = [None] * clients

    def client_thread(index: int) -> None:
        with httpx.Client(base_url=base_url, timeout=300.0) as client:
            client.get("/readyz")  # open the connection before the clock starts
            barrier.wait()
            try:
                results[index] = stream_completion(client, body)
            except BaseException as exc:  # reported by the main thread
                results[index] = exc

    threads = [threading.Thread(target=client_thread, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    streams: list[StreamResult] = []
    for result in results:
        if not isinstance(result, StreamResult):
            raise RuntimeError(f"a concurrent client failed: {result!r}")
        streams.append(result)
    return wall, streams


# --- 3. memory-read bandwidth -----------------------------------------------------------


def read_bandwidth_gb_s(threads: int, tries: int = 5) -> tuple[float, float]:
    """Best-of-N GB/s summing a 1 GiB float32 array: one thread, and `threads` threads.

    Decode runs on every usable core, so the multi-threaded figure is the ceiling's basis;
    numpy releases the GIL inside the reduction, so threads really read in parallel.
    """
    import numpy as np

    data = np.ones(BANDWIDTH_BYTES // 4, dtype=np.float32)  # ones: pages really touched
    parts = np.array_split(data, threads)

    def best(run: Callable[[], None]) -> float:
        fastest = float("inf")
        for _ in range(tries):
            started = time.perf_counter()
            run()
            fastest = min(fastest, time.perf_counter() - started)
        return data.nbytes / fastest / 1e9

    def parallel() -> None:
        workers = [threading.Thread(target=np.add.reduce, args=(part,)) for part in parts]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()

    single = best(lambda: np.add.reduce(data))
    # The ceiling is the best reading: a busy neighbour only ever makes a reading lower.
    multi = max(best(parallel), single)
    return single, multi


# --- the run -----------------------------------------------------------------------------


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    from edge_agent.runtime.machine import usable_cores
    from hub.registry import synthetic

    print(f"model: building or reusing the '{args.model}' test model", flush=True)
    model_dir = synthetic.build(synthetic.RECIPES[args.model])
    # Other work on the machine skews every figure; measure how much there was.
    run_started = time.perf_counter()
    busy_before, own_before = cpu_busy_seconds(), own_cpu_seconds()
    weights = weight_bytes(model_dir)
    cores = usable_cores()
    print(f"model: {model_dir} ({weights / 1e6:.1f} MB of weights); usable cores: {cores}")

    # 3 first: it needs the cores to itself and a gigabyte that is then handed back.
    print("bandwidth: summing a 1 GiB float32 array, best of 5 ...", flush=True)
    bw_single, bw = read_bandwidth_gb_s(cores)
    ceiling = bw * 1e9 / weights
    print(
        f"bandwidth: {bw:.1f} GB/s with {cores} threads ({bw_single:.1f} GB/s with one); "
        f"decode ceiling {ceiling:.0f} tok/s"
    )

    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:
        print("raw: loading plain onnxruntime-genai in a child process ...", flush=True)
        with raw_reference(model_dir, args.new_tokens, Path(tmp)) as raw:
            loaded = raw.loaded
            threads = int(loaded["threads"])
            raw.run()  # warm-up: first-run allocations and kernel selection
            print(
                f"raw: load {loaded['load_s']:.2f} s, {threads} threads, RSS "
                f"{mib(loaded['rss_after_load_kib']):.0f} MB after load; warmed up"
            )
            # The reference idles while the server starts, so readiness is measured alone.
            with agent_server(model_dir, Path(tmp)) as server:
                print("api: starting edge-agent serve, waiting for /readyz ...", flush=True)
                ready_s, ready = wait_ready(server)
                ready_rss = mib(proc_status_kib(server.process.pid, "VmRSS"))
                entry = ready["models"][0]
                model_id = str(entry["id"])
                load_s = float(entry["load_seconds"])
                print(
                    f"api: ready after {ready_s:.2f} s (model load {load_s:.2f} s, so "
                    f"{ready_s - load_s:.2f} s of start-up besides it); provider "
                    f"{entry.get('provider')}, {entry.get('threads')} threads; "
                    f"RSS {ready_rss:.0f} MB"
                )
                if entry.get("threads") != threads:
                    print(
                        f"api: note: the agent uses {entry.get('threads')} threads, raw {threads}"
                    )

                with httpx.Client(base_url=server.base_url, timeout=300.0) as client:
                    # The warm-up also settles the prompt's form: token ids, else the same text.
                    prompt: list[int] | str = loaded["prompt_ids"]
                    body = completion_body(model_id, prompt, args.new_tokens)
                    try:
                        warm = stream_completion(client, body)
                    except ApiRejected as exc:
                        if not 400 <= exc.status < 500:
                            raise
                        print(f"api: token-id prompt refused ({exc}); sending the same text")
                        prompt = str(loaded["prompt_text"])
                        body = completion_body(model_id, prompt, args.new_tokens)
                        warm = stream_completion(client, body)
                    prompt_form = "token_ids" if isinstance(prompt, list) else "text"
                    if warm.tokens != args.new_tokens:
                        print(f"api: note: asked for {args.new_tokens} tokens, got {warm.tokens}")

                    print(
                        f"single client: {PROMPT_TOKENS}-token prompt ({prompt_form} to the API), "
                        f"{args.new_tokens} new tokens, greedy; {args.repeats} raw and "
                        f"{args.repeats} API runs, alternating ...",
                        flush=True,
                    )
                    raw_runs: list[RawRun] = []
                    api_runs: list[StreamResult] = []
                    for _ in range(args.repeats):
                        raw_runs.append(raw.run())
                        time.sleep(SETTLE_S)
                        api_runs.append(stream_completion(client, body))
                        time.sleep(SETTLE_S)
                raw_rss_kib, raw_hwm_kib = raw.memory_kib()
                raw_rss, raw_hwm = mib(raw_rss_kib), mib(raw_hwm_kib)
                api_rss = mib(proc_status_kib(server.process.pid, "VmRSS"))
                api_hwm = mib(proc_status_kib(server.process.pid, "VmHWM"))
                raw_ttft = median([r.ttft_ms for r in raw_runs])
                raw_decode = median([r.decode_tok_s for r in raw_runs])
                api_ttft = median([r.ttft_ms for r in api_runs])
                api_decode = median([r.decode_tok_s for r in api_runs])
                print(
                    f"raw: first token {raw_ttft:.1f} ms, decode {raw_decode:.1f} tok/s "
                    "(medians; runs: "
                    + ", ".join(f"{r.decode_tok_s:.1f}" for r in raw_runs)
                    + f"); RSS {raw_rss:.0f} MB, peak {raw_hwm:.0f} MB"
                )
                print(
                    f"api: first token {api_ttft:.1f} ms, decode {api_decode:.1f} tok/s "
                    "(medians; runs: "
                    + ", ".join(f"{r.decode_tok_s:.1f}" for r in api_runs)
                    + f"); server RSS {api_rss:.0f} MB, peak {api_hwm:.0f} MB"
                )

                print(
                    f"concurrent: {CLIENTS} clients streaming at once, {args.repeats} rounds ...",
                    flush=True,
                )
                rounds = []
                for _ in range(args.repeats):
                    rounds.append(concurrent_run(server.base_url, body, CLIENTS))
                    time.sleep(SETTLE_S)
                aggregates = [sum(r.tokens for r in streams) / wall for wall, streams in rounds]
                aggregate = median(aggregates)
                after_rss = mib(proc_status_kib(server.process.pid, "VmRSS"))
                after_hwm = mib(proc_status_kib(server.process.pid, "VmHWM"))
                print(
                    f"concurrent: {aggregate:.1f} tok/s in total (median; rounds: "
                    + ", ".join(f"{a:.1f}" for a in aggregates)
                    + f"); server RSS {after_rss:.0f} MB, peak {after_hwm:.0f} MB"
                )

    # Both children have exited and been waited for, so their CPU time is in our children's.
    wall = time.perf_counter() - run_started
    others = (cpu_busy_seconds() - busy_before) - (own_cpu_seconds() - own_before)
    background = max(0.0, others / wall)
    print(f"machine: other processes used {background:.2f} cores on average during the run")
    if background > 0.1:
        print("machine: note: the machine was not idle; figures may be skewed by other work")

    decode_ratio = api_decode / raw_decode
    ttft_overhead = api_ttft - raw_ttft
    startup = ready_s - load_s
    rss_overhead = api_rss - raw_rss
    hwm_overhead = api_hwm - raw_hwm
    api_of_ceiling = api_decode / ceiling
    concurrency_ratio = aggregate / api_decode
    figures = {
        "raw_load_s": figure(loaded["load_s"]),
        "raw_ttft_ms": figure(raw_ttft),
        "raw_decode_tok_s": figure(raw_decode),
        "raw_rss_after_load_mb": figure(mib(loaded["rss_after_load_kib"])),
        "raw_rss_mb": figure(raw_rss),
        "raw_peak_rss_mb": figure(raw_hwm),
        "api_ready_s": figure(ready_s),
        "api_model_load_s": figure(load_s),
        "api_ready_minus_load_s": figure(startup, "<= 1.5", startup <= 1.5),
        "api_ttft_ms": figure(api_ttft),
        "api_decode_tok_s": figure(api_decode),
        "api_raw_decode_ratio": figure(decode_ratio, ">= 0.95", decode_ratio >= 0.95),
        "api_ttft_overhead_ms": figure(ttft_overhead, "<= 10", ttft_overhead <= 10),
        # Best against best: less noisy than medians when the prefill time wanders.
        "api_ttft_overhead_best_ms": figure(
            min(r.ttft_ms for r in api_runs) - min(r.ttft_ms for r in raw_runs)
        ),
        "api_rss_at_ready_mb": figure(ready_rss),
        "api_rss_mb": figure(api_rss),
        "api_peak_rss_mb": figure(api_hwm),
        "api_rss_overhead_mb": figure(rss_overhead, "<= 60", rss_overhead <= 60),
        "api_peak_rss_overhead_mb": figure(hwm_overhead, "<= 60", hwm_overhead <= 60),
        "memory_bandwidth_gb_s": figure(bw),
        "memory_bandwidth_one_thread_gb_s": figure(bw_single),
        "decode_ceiling_tok_s": figure(ceiling),
        "raw_decode_of_ceiling": figure(raw_decode / ceiling),
        "api_decode_of_ceiling": figure(api_of_ceiling, ">= 0.55", api_of_ceiling >= 0.55),
        "concurrent_aggregate_tok_s": figure(aggregate),
        "concurrent_vs_single_ratio": figure(concurrency_ratio, ">= 1.0", concurrency_ratio >= 1.0),
        "api_rss_after_concurrent_mb": figure(after_rss),
        "api_peak_rss_after_concurrent_mb": figure(after_hwm),
        "background_cpu_cores": figure(background),
    }
    return {
        "figures": figures,
        "reference": "raw onnxruntime-genai",
        "model": {"recipe": args.model, "dir": str(model_dir), "weight_bytes": weights},
        "settings": {
            "prompt_tokens": PROMPT_TOKENS,
            "new_tokens": args.new_tokens,
            "repeats": args.repeats,
            "threads": threads,
            "clients": CLIENTS,
            "prompt_form": prompt_form,
        },
        "samples": {
            "raw_ttft_ms": [round(r.ttft_ms, 2) for r in raw_runs],
            "raw_decode_tok_s": [round(r.decode_tok_s, 2) for r in raw_runs],
            "api_ttft_ms": [round(r.ttft_ms, 2) for r in api_runs],
            "api_decode_tok_s": [round(r.decode_tok_s, 2) for r in api_runs],
            "api_completion_tokens": [r.tokens for r in api_runs],
            "concurrent_tok_s": [round(a, 2) for a in aggregates],
            "concurrent_tokens": [[r.tokens for r in streams] for _, streams in rounds],
            # Each client's first token: shows whether the four were batched or queued.
            "concurrent_ttft_ms": [
                sorted(round(r.ttft_ms, 1) for r in streams) for _, streams in rounds
            ],
        },
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("small", "tiny"), default="small")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each kind")
    parser.add_argument("--new-tokens", type=int, default=128)
    # The reference child re-enters this script with these.
    parser.add_argument("--raw-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.new_tokens < 2:
        parser.error("--repeats must be >= 1 and --new-tokens >= 2")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.raw_child:
        raw_child(args.model_dir, args.new_tokens)
        return 0
    report(benchmark(args))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # also for anything the parent loads
    sys.exit(main())

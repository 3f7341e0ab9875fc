"""Conversations at full speed: the agent against llama.cpp's llama-server (issue 17).

Both servers are driven by the official `openai` client, alternating within each repeat,
on the same model shape (a synthetic model, random weights):

    .venv/bin/python bench/conversation.py [--model small|tiny] [--repeats 3]
        [--llama-server PATH --gguf PATH]

Figures: decode tok/s (128 tokens after a 64-token prompt); time to first token for a cold
1,000-token prompt, for the first turn of a chat whose long system prompt was seen before,
for the 6th turn of a growing chat, and for a 1,000-token prompt sent again; a 20-turn chat
(every answer equal with and without the prompt cache); aggregate tok/s of 4 concurrent
chats (llama-server then runs with `-np 4`). Without `--llama-server` the agent is measured
alone, prompt cache on against off (`prompt_cache_mib = 0`) in the same run; the targets
then compare those two. Prints one JSON line with every figure, its target and met/missed.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import agent_server, figure, free_port, median, report, wait_ready

WORDS = [
    "def",
    "class",
    "return",
    "import",
    "self",
    "value",
    "items",
    "list",
    "dict",
    "lambda",
    "yield",
    "async",
    "await",
    "with",
    "open",
    "file",
    "path",
    "data",
    "result",
    "error",
    "raise",
    "try",
    "except",
    "finally",
    "while",
    "for",
    "range",
    "print",
    "string",
    "bytes",
    "number",
    "parse",
    "format",
    "token",
    "model",
    "cache",
    "batch",
    "thread",
    "queue",
    "socket",
]
# About one token per word with the small model's tokenizer: a 1,000-token prompt. The tiny
# model's tokenizer takes several tokens a word and its context is 2,048: fewer words.
PROMPT_WORDS = {"small": 990, "tiny": 300}
WORDS_NOW = [PROMPT_WORDS["small"]]  # the run's choice
ANSWER_TOKENS = 48  # each chat answer's forced length: the history grows alike everywhere


@dataclass
class Target:
    """One server under test, reached through the openai client."""

    name: str
    url: str
    model: str
    extra: dict[str, Any]  # request fields beyond OpenAI's (forcing the answer's length)
    # Each 6th turn's prompt tokens that were not reused: the prefill its time pays for.
    # An answer whose text tokenizes differently from the tokens generated ends reuse there.
    sixth_turn_new_tokens: list[float] = field(default_factory=list)

    def client(self) -> Any:
        import openai

        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0)


def text_of(words: int, seed: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(words))


def stream_chat(target: Target, messages: Any, max_tokens: int) -> dict[str, Any]:
    """One streamed chat request: time to first text, decode rate, the text, cached tokens."""
    sent = time.perf_counter()
    first: float | None = None
    last = sent
    parts: list[str] = []
    usage: Any = None
    stream = target.client().chat.completions.create(
        model=target.model,
        messages=messages,
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=target.extra,
    )
    for chunk in stream:
        now = time.perf_counter()
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            last = now
            if choice.delta.content:
                parts.append(choice.delta.content)
                first = first or now
    tokens = usage.completion_tokens if usage else 0
    details = getattr(usage, "prompt_tokens_details", None)
    return {
        "ttft": (first or last) - sent,
        "decode": (tokens - 1) / (last - first) if first and last > first and tokens > 1 else 0.0,
        "text": "".join(parts),
        "prompt_tokens": usage.prompt_tokens if usage else 0,
        "completion_tokens": tokens,
        "cached_tokens": (details.cached_tokens or 0) if details else 0,
    }


# --- the figures, each measured on one target ---------------------------------------------


def decode_rate(target: Target, run: int) -> float:
    prompt = [{"role": "user", "content": text_of(50, 1000 + run)}]
    return float(stream_chat(target, prompt, 128)["decode"])


def cold_ttft(target: Target, run: int) -> float:
    # A fresh first word: nothing of it can be cached anywhere.
    prompt = [
        {"role": "user", "content": f"run{run}-{time.time_ns()} " + text_of(WORDS_NOW[0], 2000)}
    ]
    return float(stream_chat(target, prompt, 1)["ttft"])


def system_prompt_ttft(target: Target, run: int) -> float:
    system = {"role": "system", "content": text_of(600, 3000 + run)}
    stream_chat(target, [system, {"role": "user", "content": "first user"}], 1)
    return float(stream_chat(target, [system, {"role": "user", "content": "next user"}], 1)["ttft"])


def chat_turns(
    target: Target, turns: int, seed: int, answer: int = ANSWER_TOKENS, words: int = 60
) -> list[dict[str, Any]]:
    """A growing chat: each turn sends the whole history plus a new question."""
    messages = [{"role": "system", "content": text_of(80, seed)}]
    results = []
    for turn in range(turns):
        messages.append({"role": "user", "content": text_of(words, seed + turn + 1)})
        result = stream_chat(target, messages, answer)
        messages.append({"role": "assistant", "content": result["text"]})
        results.append(result)
    return results


def twenty_turns(target: Target) -> list[dict[str, Any]]:
    # Short turns, so that 20 of them fit the tiny test model's 2,048-token context too.
    return chat_turns(target, 20, 9000, answer=24, words=10)


def sixth_turn_ttft(target: Target, run: int) -> float:
    sixth = chat_turns(target, 6, 4000 + 100 * run, answer=96)[-1]
    target.sixth_turn_new_tokens.append(float(sixth["prompt_tokens"] - sixth["cached_tokens"]))
    return float(sixth["ttft"])


def repeated_prompt_ttft(target: Target, run: int) -> float:
    prompt = [
        {"role": "user", "content": f"again{run}-{time.time_ns()} " + text_of(WORDS_NOW[0], 5000)}
    ]
    stream_chat(target, prompt, 1)
    return float(stream_chat(target, prompt, 1)["ttft"])


def concurrent_chats(target: Target, chats: int = 4, turns: int = 4) -> float:
    """Aggregate completion tokens per second of `chats` chats run at once."""
    tokens = [0] * chats
    failures: list[BaseException] = []

    def one(index: int) -> None:
        try:
            tokens[index] = sum(
                r["completion_tokens"] for r in chat_turns(target, turns, 7000 + index * 50)
            )
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(chats)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"a concurrent chat failed: {failures[0]!r}")
    return sum(tokens) / (time.perf_counter() - started)


FIGURES: dict[str, Callable[[Target, int], float]] = {
    "decode_tok_s": decode_rate,
    "ttft_cold_1000_s": cold_ttft,
    "ttft_seen_system_prompt_s": system_prompt_ttft,
    "ttft_6th_turn_s": sixth_turn_ttft,
    "ttft_repeated_1000_s": repeated_prompt_ttft,
}


# --- servers ---------------------------------------------------------------------------


@contextmanager
def agent(model_dir: Path, workdir: Path, cache: bool) -> Iterator[Target]:
    env = {**os.environ, "EDGE_AGENT__RUNTIME__PROMPT_CACHE_MIB": "1024" if cache else "0"}
    folder = workdir / ("agent-cache" if cache else "agent-nocache")
    folder.mkdir()
    with agent_server(model_dir, folder, env) as server:
        _, status = wait_ready(server)
        name = status["models"][0]["id"]
        yield Target(
            "agent" if cache else "agent-nocache", server.base_url, name, {"ignore_eos": True}
        )


@contextmanager
def llama_server(binary: Path, gguf: Path, workdir: Path, slots: int) -> Iterator[Target]:
    import httpx

    port = free_port()
    command = [
        str(binary),
        "-m",
        str(gguf),
        "-t",
        "2",
        "-c",
        str(4096 * slots),
        "-np",
        str(slots),
        "-fa",
        "on",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with (workdir / f"llama-{slots}.log").open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"llama-server did not start; see {workdir}")
            time.sleep(0.1)
        yield Target(f"llama-server-np{slots}", url, "model", {"ignore_eos": True})
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


def measure(targets: list[Target], repeats: int) -> dict[str, dict[str, float]]:
    """Median of each figure on each target, the targets alternating within each repeat."""
    samples: dict[str, dict[str, list[float]]] = {t.name: {f: [] for f in FIGURES} for t in targets}
    for target in targets:  # warm-up: first requests pay one-off costs
        stream_chat(target, [{"role": "user", "content": "warm up"}], 4)
    for run in range(repeats):
        for name, measure_one in FIGURES.items():
            order = targets if run % 2 == 0 else list(reversed(targets))
            for target in order:
                samples[target.name][name].append(measure_one(target, run))
    return {t: {f: median(v) for f, v in figs.items()} for t, figs in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("small", "tiny"), default="small")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--llama-server", type=Path, help="llama-server binary (else: agent alone)")
    parser.add_argument("--gguf", type=Path, help="the same model as GGUF, for llama-server")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from hub.registry import synthetic

    model_dir = synthetic.build(synthetic.RECIPES[args.model])
    WORDS_NOW[0] = PROMPT_WORDS[args.model]
    reference = bool(args.llama_server and args.gguf)

    def other_server(workdir: Path, slots: int) -> Any:
        if reference:
            return llama_server(args.llama_server, args.gguf, workdir, slots)
        return agent(model_dir, workdir / f"np{slots}", cache=False)

    with tempfile.TemporaryDirectory(prefix="bench-conversation-") as tmp:
        workdir = Path(tmp)
        for slots in (1, 4):
            (workdir / f"np{slots}").mkdir()
        with agent(model_dir, workdir, cache=True) as fast:
            with other_server(workdir, 1) as other:
                figures = measure([fast, other], args.repeats)
                twenty = [twenty_turns(fast), twenty_turns(other)]
            fast_concurrent = concurrent_chats(fast)
        with other_server(workdir, 4) as four:
            other_concurrent = concurrent_chats(four)
            four_name = four.name
        plain = twenty[1]
        if reference:  # answers are compared within the agent: cache on against off
            with agent(model_dir, workdir / "np1", cache=False) as uncached:
                plain = twenty_turns(uncached)
    result = summarize(
        fast.name, other.name, figures, twenty, plain, fast_concurrent, other_concurrent, four_name
    )
    result["figures"].update(sixth_turn_prefill(fast, other, figures))
    result["model"] = args.model
    result["reference"] = "llama-server" if reference else "agent without prompt cache"
    report(result)


def summarize(
    ours: str,
    theirs: str,
    figures: dict[str, dict[str, float]],
    twenty: list[list[dict[str, Any]]],
    plain: list[dict[str, Any]],
    ours_concurrent: float,
    theirs_concurrent: float,
    four_name: str,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in FIGURES:
        a, b = figures[ours][name], figures[theirs][name]
        out[f"{name}_{ours}"] = figure(a)
        out[f"{name}_{theirs}"] = figure(b)
        ratio = a / b if b else None
        if name == "decode_tok_s":
            out[f"{name}_ratio"] = figure(ratio, ">= 1.0", ratio is not None and ratio >= 1.0)
        else:
            limit = 0.5 if name == "ttft_6th_turn_s" else 1.0
            out[f"{name}_ratio"] = figure(
                ratio, f"<= {limit}", ratio is not None and ratio <= limit
            )
    # A turn whose answer has no text (random weights: tokens that decode to nothing) shows
    # its client no first token until the answer ends: its time says nothing of the prefill.
    for name, chat in zip((ours, theirs), twenty, strict=True):
        answered = [r["ttft"] for r in chat[1:] if r["text"]]
        out[f"ttft_20_turn_median_s_{name}"] = figure(median(answered) if answered else None)
        out[f"turns_without_text_20_{name}"] = figure(float(len(chat) - 1 - len(answered)))
    out["cached_tokens_20_turns"] = figure(float(sum(r["cached_tokens"] for r in twenty[0])))
    same = [a["text"] for a in twenty[0]] == [b["text"] for b in plain]
    out["answers_unchanged_20_turns"] = figure(float(same), "1 (cache on = off)", same)
    ratio = ours_concurrent / theirs_concurrent if theirs_concurrent else None
    out[f"concurrent_4_chats_tok_s_{ours}"] = figure(ours_concurrent)
    out[f"concurrent_4_chats_tok_s_{four_name}"] = figure(theirs_concurrent)
    out["concurrent_4_chats_ratio"] = figure(ratio, ">= 1.2", ratio is not None and ratio >= 1.2)
    return {"bench": "conversation", "figures": out}


def sixth_turn_prefill(
    ours: Target, theirs: Target, figures: dict[str, dict[str, float]]
) -> dict[str, Any]:
    """The 6th turn's new (not reused) prompt tokens on each side, and its time per new
    token: where the two sides reused different amounts, this compares their prefill."""
    out: dict[str, Any] = {}
    per_token = []
    for target in (ours, theirs):
        new = median(target.sixth_turn_new_tokens) if target.sixth_turn_new_tokens else 0.0
        out[f"sixth_turn_new_tokens_{target.name}"] = figure(new)
        per_token.append(figures[target.name]["ttft_6th_turn_s"] / new if new else None)
    a, b = per_token
    out["sixth_turn_s_per_new_token_ratio"] = figure(a / b if a and b else None)
    return out


if __name__ == "__main__":
    main()

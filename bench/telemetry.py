"""Anonymous telemetry: what it costs on the inference path, and what it sends per day.

1. Overhead. The same installed release (the `small` test model, installed through a signed
   repository as a fleet device holds it, so telemetry records it) is served by
   two `edge-agent serve` processes at once, one with telemetry on (policy local-log: the
   collector records every request exactly as with `aggregate`, nothing needs a hub) and one
   with it off, taking turns one request at a time. Figure: the median of the paired decode
   tok/s ratios on / off (target >= 0.99).
2. Volume. A simulated day of realistic use runs through the real collector and publisher
   (a fake clock, the agent's own outbox): requests spread over working hours, a few
   errors and rejections, a model load, an update, a restart. Figure: the bytes queued for
   the hub in 24 hours, topic and payload (target < 50 KB per device per day).

    .venv/bin/python bench/telemetry.py [--model small|tiny] [--runs 12] [--new-tokens 128]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from common import agent_server, figure, median, report, wait_ready
from inference import completion_body, stream_completion

DAY_S = 86_400
MODEL = "bench-model"
PROMPT = "Summarise the following clause of the supply contract in two sentences: " * 4


def install_release(model_dir: Path, device: Path, workdir: Path) -> None:
    """Publish `model_dir` as release bench-model 1.0.0 and install it on `device`."""
    from edge_agent.store import ModelStore
    from edge_agent.updates.fetchers import fetcher_for
    from edge_agent.updates.manager import UpdateManager
    from edge_agent.updates.source import ReleaseSource, pin_root
    from hub.registry.repository import ReleaseRepository

    repo = ReleaseRepository.create(workdir / "repo", workdir / "keys")
    repo.publish(model_dir, MODEL, "1.0.0")
    pin_root(device / "trust", repo.trusted_root_path())
    base, fetcher = fetcher_for(str(repo.root))
    with ReleaseSource(base, device / "trust", fetcher) as source:
        UpdateManager(ModelStore(device), device / "update-state.json").update(source, MODEL)


@contextmanager
def served(device: Path, policy: str, workdir: Path) -> Iterator[str]:
    """`edge-agent serve` of the installed release with telemetry `policy`; its base URL."""
    folder = workdir / policy
    folder.mkdir(parents=True)
    (folder / "none.toml").touch()
    env = {
        **os.environ,
        "EDGE_AGENT_CONFIG": str(folder / "none.toml"),
        "EDGE_AGENT__STORE__DIR": str(device),
        "EDGE_AGENT__TELEMETRY__POLICY": policy,
    }
    with agent_server(MODEL, folder, env) as server:
        wait_ready(server)
        yield server.base_url


def paired_rates(
    device: Path, workdir: Path, runs: int, new_tokens: int, *, on_first: bool
) -> list[tuple[float, float]]:
    """(on, off) decode tok/s pairs. Both servers are loaded at once and take turns, one
    request at a time, so each pair ran seconds apart under the same machine conditions.
    Which server starts first changes its speed by a few percent here (where its memory
    lands), so callers run both orders."""
    import httpx

    body = completion_body(MODEL, PROMPT, new_tokens)
    first, second = ("local-log", "off") if on_first else ("off", "local-log")
    with (
        served(device, first, workdir / f"{first}-first") as first_url,
        served(device, second, workdir / f"{first}-first") as second_url,
        httpx.Client(base_url=first_url if on_first else second_url, timeout=120) as on,
        httpx.Client(base_url=second_url if on_first else first_url, timeout=120) as off,
    ):
        stream_completion(on, body)  # warm-ups
        stream_completion(off, body)
        pairs = []
        for run in range(runs):
            # Alternate which goes first, so a drift within a pair hits both alike.
            lead, follow = (on, off) if run % 2 == 0 else (off, on)
            a = stream_completion(lead, body).decode_tok_s
            b = stream_completion(follow, body).decode_tok_s
            pair = (a, b) if lead is on else (b, a)
            print(f"run {run + 1}: telemetry on {pair[0]:.1f} tok/s, off {pair[1]:.1f} tok/s")
            pairs.append(pair)
    return pairs


def day_of_telemetry(workdir: Path) -> tuple[int, int]:
    """(bytes, messages) queued for the hub over a simulated day of realistic use."""
    from edge_agent.config import TelemetryConfig
    from edge_agent.protocol.telemetry import ErrorClass, UpdateOutcome
    from edge_agent.sync.outbox import Outbox
    from edge_agent.telemetry import factory
    from tests.telemetry.issuer import KeyIssuer

    now = [1_700_000_000.0 - 1_700_000_000.0 % DAY_S]  # a UTC midnight
    rng = random.Random(7)
    with Outbox(workdir / "outbox.sqlite3") as outbox:
        telemetry = factory.build(
            TelemetryConfig(),
            data_dir=workdir / "agent",
            outbox=outbox,
            agent_version="0.1.0",
            execution_provider="cpu",
            clock=lambda: now[0],
            issuer=KeyIssuer(),  # the hub's real keys in this process: tokens cost no HTTP
        )
        collector = telemetry.collector
        collector.record_restart(crashed=False)
        collector.record_load("contracts", "1.4.0", seconds=2.1, peak_memory_mib=610)
        for hour in range(24):
            busy = 8 <= hour < 19  # an office day: 40 requests an hour, a few at night
            for _ in range(40 if busy else rng.randint(0, 2)):
                now[0] += rng.uniform(0, 60)
                collector.record_request(
                    "contracts",
                    "1.4.0",
                    ttft_s=rng.uniform(0.1, 0.6),
                    per_token_s=rng.uniform(0.02, 0.05),
                    tokens_in=rng.randint(200, 1500),
                    tokens_out=rng.randint(50, 400),
                )
            if busy and rng.random() < 0.3:
                collector.record_error(ErrorClass.CONTEXT_LENGTH, "contracts", "1.4.0")
            if hour == 13:
                collector.record_rejection("contracts", "1.4.0")
                collector.record_update_outcome("contracts", "1.5.0", UpdateOutcome.SUCCEEDED)
            now[0] = (now[0] // 3600 + 1) * 3600  # the next hour
            telemetry.publisher.publish_due()
        items = outbox.pending(limit=10_000)
        return sum(len(i.topic) + len(i.payload) for i in items), len(items)


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    from hub.registry import synthetic

    model_dir = synthetic.build(synthetic.RECIPES[args.model])
    with tempfile.TemporaryDirectory(prefix="edge-bench-telemetry-") as tmp:
        work = Path(tmp)
        device = work / "device"
        print(f"installing {model_dir.name} as release bench-model 1.0.0 ...", flush=True)
        install_release(model_dir, device, work)
        half = max(1, args.runs // 2)
        pairs = [
            *paired_rates(device, work, half, args.new_tokens, on_first=True),
            *paired_rates(device, work, half, args.new_tokens, on_first=False),
        ]
        if not (device / "telemetry" / "sent.log").exists():  # proof that it recorded
            raise RuntimeError("telemetry on logged nothing: the run did not measure it")
        day_bytes, messages = day_of_telemetry(work / "day")
    on, off = [p[0] for p in pairs], [p[1] for p in pairs]
    ratio = median([a / b for a, b in pairs])
    print(f"decode with telemetry on / off: median of paired ratios {ratio:.3f}")
    print(f"a day of telemetry: {messages} messages, {day_bytes} bytes ({day_bytes / 1000:.1f} KB)")
    return {
        "benchmark": "telemetry",
        "reference": "the same agent and release with telemetry off, same run",
        "figures": {
            "decode_on_tok_s": figure(median(on)),
            "decode_off_tok_s": figure(median(off)),
            "decode_on_vs_off": figure(ratio, ">= 0.99", ratio >= 0.99),
            "bytes_per_device_day": figure(day_bytes, "< 50000", day_bytes < 50_000),
            "messages_per_device_day": figure(messages),
        },
        "settings": {"model": args.model, "runs": args.runs, "new_tokens": args.new_tokens},
        "samples": {"on": on, "off": off},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("small", "tiny"), default="small")
    parser.add_argument("--runs", type=int, default=12)
    parser.add_argument("--new-tokens", type=int, default=128)
    report(benchmark(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

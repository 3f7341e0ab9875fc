"""Crash soak: kill -9 an update at random moments, many times over.

The test suite kills at every named checkpoint (tests/updates/test_crash.py); this script
kills at random instants instead, including between checkpoints, inside fsync and
inside the health check. After every kill it checks what a power cut must leave: the old
or the new version active and generating; a restart that completes or undoes the
update; and nothing half-written after garbage collection.

    .venv/bin/python bench/crash_soak.py [--iterations 200] [--seed 1]

The last line is one JSON object: iterations, kills that landed before the switch, failures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from common import EDGE_AGENT, figure  # noqa: E402

from edge_agent.store import ModelStore  # noqa: E402
from edge_agent.updates.fetchers import fetcher_for  # noqa: E402
from edge_agent.updates.health import check_model  # noqa: E402
from edge_agent.updates.manager import UpdateManager  # noqa: E402
from edge_agent.updates.source import ReleaseSource, pin_root  # noqa: E402
from hub.registry import synthetic  # noqa: E402
from hub.registry.repository import ReleaseRepository  # noqa: E402

MODEL = "tiny"


def update_in_process(device: Path, repo: Path) -> str:
    manager = UpdateManager(ModelStore(device), device / "update-state.json")
    manager.recover()
    base, fetcher = fetcher_for(str(repo))
    with ReleaseSource(base, device / "trust", fetcher) as source:
        outcome = manager.update(source, MODEL)
    return str(outcome.version)


def start_update(device: Path, repo: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "EDGE_AGENT__STORE__DIR": str(device)}
    return subprocess.Popen(
        [str(EDGE_AGENT), "update", MODEL, "--from", str(repo)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def leftovers(store: ModelStore) -> list[str]:
    found = [str(p) for p in store.root.rglob("*.tmp*")]
    if store.staging_dir.exists():
        found += [str(p) for p in store.staging_dir.iterdir()]
    if store.chunks_dir.exists():
        found += [str(p) for p in store.chunks_dir.rglob("*") if p.is_file()]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    model_dir = synthetic.build(synthetic.RECIPES["tiny"])

    with tempfile.TemporaryDirectory(prefix="crash-soak-") as tmp_name:
        tmp = Path(tmp_name)
        repo = ReleaseRepository.create(tmp / "repo", tmp / "keys")
        repo.publish(model_dir, MODEL, "1.0.0")
        template = tmp / "template"
        pin_root(template / "trust", repo.trusted_root_path())
        update_in_process(template, repo.root)
        changed = tmp / "v2"
        shutil.copytree(model_dir, changed)
        config = json.loads((changed / "genai_config.json").read_text())
        config["search"]["top_k"] = 7
        (changed / "genai_config.json").write_text(json.dumps(config))
        repo.publish(changed, MODEL, "1.1.0")

        # How long one uninterrupted update takes: kills land anywhere within it.
        probe = tmp / "probe"
        shutil.copytree(template, probe, symlinks=True)
        started = time.perf_counter()
        start_update(probe, repo.root).wait()
        duration = time.perf_counter() - started
        print(f"one update takes {duration:.2f} s; killing at random instants within it")

        before_switch = failures = 0
        for i in range(args.iterations):
            device = tmp / f"device-{i}"
            shutil.copytree(template, device, symlinks=True)
            process = start_update(device, repo.root)
            time.sleep(rng.uniform(0, duration))
            process.send_signal(signal.SIGKILL)
            killed = process.wait() == -signal.SIGKILL
            store = ModelStore(device)
            try:
                active = store.active(MODEL)
                assert active is not None and active.version in {"1.0.0", "1.1.0"}
                before_switch += killed and active.version == "1.0.0"
                check_model(active.path)
                assert update_in_process(device, repo.root) == "1.1.0"
                store.gc()
                assert not leftovers(store), leftovers(store)
            except Exception as exc:
                failures += 1
                print(f"iteration {i}: FAILED: {exc!r}")
            shutil.rmtree(device)
            if (i + 1) % 25 == 0:
                print(
                    f"{i + 1} kills, {before_switch} before the switch, {failures} failures",
                    flush=True,
                )

    result = {
        "figures": {
            "iterations": figure(args.iterations),
            "kills_before_the_switch": figure(before_switch),
            "failures": figure(failures, "== 0", failures == 0),
        },
        "reference": "an uninterrupted update of the same release",
        "update_seconds": round(duration, 3),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

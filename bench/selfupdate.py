"""Agent self-update: installer size, offline install time, switch-to-serving time and
failed requests during a switch under load.

    .venv/bin/python bench/selfupdate.py [--installer DIR] [--model small|tiny]
                                         [--clients 4] [--switches 3]

Builds the offline installer from this checkout (firmware-images/build; or takes --installer),
installs it twice with no network (`unshare -n`, a network namespace with nothing in it)
into slots a and b of a fresh install root, starts the installed launcher holding the API
socket (--listen) over slot a's agent, and while CLIENTS threads send completions, asks for
a trial of the other slot SWITCHES times (a -> b -> a ...). Measured per switch: from the
trial's request (slots.json written, as the fleet's self-update does) to the new agent
committed (its READY=1: model loaded, its port answers) and to the old agent gone (drained).
Every request is counted by its outcome; the target is 0 failed. Reference for the install
time: creating an empty virtual environment with the same Python, same run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from common import child_pids, figure, free_port, mb, median, report

CHECKOUT = Path(__file__).resolve().parents[1]
BODY = {"model": "bench", "prompt": "def main():", "max_tokens": 16}


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def build_installer(into: Path) -> tuple[Path, float]:
    start = time.perf_counter()
    subprocess.run([sys.executable, str(CHECKOUT / "firmware-images" / "build"), "--out",
                    str(into)], env=clean_env(), check=True)  # fmt: skip
    return into, time.perf_counter() - start


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def install(installer: Path, device: Path, slot: str) -> float:
    paths = ["--root", str(device / "opt"), "--state-dir", str(device / "var"),
             "--config-dir", str(device / "etc"), "--no-system", "--slot", slot]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(["unshare", "-n", "bash", str(installer / "install"), *paths],
                   env=clean_env(), check=True, capture_output=True)  # fmt: skip
    return time.perf_counter() - start


def empty_venv_seconds(work: Path) -> float:
    start = time.perf_counter()
    subprocess.run(["python3.11", "-m", "venv", str(work / "reference-venv")], check=True)
    return time.perf_counter() - start


class Load:
    """Clients sending completions until stopped, each outcome kept (status or error)."""

    def __init__(self, url: str, clients: int) -> None:
        import httpx

        self.httpx = httpx
        self.url = url
        self.results: list[int | str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(i % 2 == 0,))
                        for i in range(clients)]  # fmt: skip

    def run(self, keep_alive: bool) -> None:
        with self.httpx.Client(timeout=120) as client:
            while not self.stop.is_set():
                try:
                    if keep_alive:
                        answer = client.post(f"{self.url}/v1/completions", json=BODY)
                    else:
                        answer = self.httpx.post(f"{self.url}/v1/completions", json=BODY,
                                                 timeout=120)  # fmt: skip
                    self.results.append(answer.status_code)
                except self.httpx.HTTPError as exc:
                    self.results.append(f"{type(exc).__name__}: {exc}")

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(180)


def slots(root: Path) -> dict[str, Any]:
    return json.loads((root / "slots.json").read_text())  # type: ignore[no-any-return]


def wait(predicate: Any, timeout: float, what: str) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if predicate():
            return time.perf_counter() - start
        time.sleep(0.01)
    raise SystemExit(f"bench: {what} did not happen within {timeout} s")


def switches(device: Path, model: Path, clients: int, count: int) -> dict[str, Any]:
    import httpx

    sys.path.insert(0, str(CHECKOUT))
    from edge_agent.installed.launcher import request_trial

    root, port = device / "opt", free_port()
    env = {**clean_env(), "EDGE_AGENT_CONFIG": str(device / "etc" / "agent.toml"),
           "EDGE_AGENT__TELEMETRY__POLICY": "off"}  # fmt: skip
    log = (device / "launcher.log").open("wb")
    launcher = subprocess.Popen(
        [sys.executable, "-I", str(root / "launcher.py"), "--root", str(root), "--listen",
         f"127.0.0.1:{port}", "--deadline", "120", "--", "serve", "--model", str(model),
         "--name", "bench", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    to_serving, to_drained = [], []
    try:
        wait(ready, 180, "the first agent serving")
        with Load(url, clients) as load:
            time.sleep(2)
            for _ in range(count):
                current = slots(root)["committed"]
                target = "b" if current == "a" else "a"
                start = time.perf_counter()
                request_trial(root, target, "bench")
                wait(lambda t=target: slots(root)["committed"] == t, 180, "the switch")
                to_serving.append(time.perf_counter() - start)
                wait(lambda: len(child_pids(launcher.pid)) == 1, 120, "the old agent's drain")
                to_drained.append(time.perf_counter() - start)
                time.sleep(2)
        failed = [r for r in load.results if r != 200]
    finally:
        launcher.terminate()
        launcher.wait(60)
        log.close()
    return {"to_serving": to_serving, "to_drained": to_drained, "requests": len(load.results),
            "failed": failed}  # fmt: skip


def model_dir(name: str) -> Path:
    sys.path.insert(0, str(CHECKOUT))
    from hub.registry import synthetic

    return synthetic.build(synthetic.RECIPES[name])


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-selfupdate-"))
    try:
        built = None
        installer = args.installer
        if installer is None:
            installer, built = build_installer(work / "installer")
        size = folder_bytes(installer)
        device = work / "device"
        install_s = install(installer, device, "a")
        install(installer, device, "b")  # the other slot, as a self-update makes it
        reference_s = empty_venv_seconds(work)
        run = switches(device, model_dir(args.model), args.clients, args.switches)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    failed = len(run["failed"])
    return {
        "benchmark": "selfupdate",
        "figures": {
            "failed_requests_during_switches": figure(failed, "0", failed == 0),
            "switch_to_new_agent_serving_s": figure(median(run["to_serving"])),
            "switch_to_old_agent_drained_s": figure(median(run["to_drained"])),
            "installer_mb": figure(mb(size)),
            "offline_install_s": figure(install_s),
            "empty_venv_s": figure(reference_s),
            "installer_build_s": figure(built),
        },
        "reference": "offline install against creating an empty venv, same Python, same run",
        "requests_during_switches": run["requests"],
        "failures": run["failed"][:10],
        "samples": {k: [round(v, 3) for v in run[k]] for k in ("to_serving", "to_drained")},
        "model": args.model,
        "clients": args.clients,
        "cpus": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--installer", type=Path, help="an installer folder already built")
    parser.add_argument("--model", default="small", choices=("small", "tiny"))
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--switches", type=int, default=3)
    report(benchmark(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    sys.exit(main())

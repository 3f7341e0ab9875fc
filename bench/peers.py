"""Peer fetch benchmark: a device fetching a release's chunks from another device of its
site, against fetching them from the hub's artifact server, on loopback, same run.

The `small` test model (SmolLM2-360M's shape, int4, about 200 MB) is published by the
hub's own code. Two servers run as child processes of their own, each on a free loopback
port: the hub's artifact server (HTTPS with the hub's certificate, bearer token), and
device A's chunk server (`edge_agent.updates.peer_server`, mutual TLS with the fleet's
device certificates) over a store that installed the release. Device B then fetches every
chunk of the release through the agent's chunk chain (`ChunkChain`, which checks each
chunk's sha256) with a single source: the hub, or peer A. The two kinds alternate, a new
connection each run; the figure is the median peer throughput over the median hub
throughput (target >= 0.9).

The last line is one JSON object with every figure (the house style of bench/).

    .venv/bin/python bench/peers.py [--repeats 5] [--model small|tiny]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import figure, mb, median, report

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # run as a plain script from anywhere

VERSION = "1.0.0"
TARGET_RATIO = 0.9


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server on port {port} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


# --- the servers, each in a child process (`--serve hub|peer`) ----------------------------


def serve_hub(work: Path, port: int) -> None:
    import uvicorn

    from hub.artifacts.server import create_app
    from hub.artifacts.tokens import TokenStore
    from hub.fleet.https import https_files, tls_hosts
    from hub.fleet.identity import DeviceCA

    files, _made = https_files(DeviceCA(work / "ca"), tls_hosts("127.0.0.1"))
    app = create_app(work / "repo", TokenStore(work / "tokens.json"))
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        ssl_certfile=str(files.cert),
        ssl_keyfile=str(files.key),
    )
    uvicorn.Server(config).run()


def serve_peer(work: Path, port: int) -> None:
    from edge_agent.store import ModelStore
    from edge_agent.updates.peer_server import create_app, peer_server

    app = create_app(ModelStore(work / "dev-a"))
    peer_server(app, device_tls(work, "dev-a"), host="127.0.0.1", port=port).run()


# --- set-up --------------------------------------------------------------------------------


def device_tls(work: Path, name: str) -> Any:
    from edge_agent.updates.peer_tls import FleetTls

    folder = work / name / "identity"
    return FleetTls(work / "ca" / "ca.crt", folder / "device.crt", folder / "device.key")


def set_up(work: Path, model: str) -> tuple[str, dict[str, int]]:
    """The hub's repository with the release, devices A and B with certificates, A holding
    the release; returns B's download token and the release's chunks."""
    from edge_agent.store import ModelStore
    from edge_agent.sync.identity import key_pem, make_csr, new_key
    from edge_agent.updates.fetchers import fetcher_for
    from edge_agent.updates.manager import UpdateManager
    from edge_agent.updates.source import ReleaseSource, pin_root
    from hub.artifacts.tokens import TokenStore
    from hub.fleet.identity import DeviceCA
    from hub.registry import synthetic
    from hub.registry.repository import ReleaseRepository

    ca = DeviceCA(work / "ca")
    repo = ReleaseRepository.create(work / "repo", work / "keys")
    repo.publish(synthetic.build(synthetic.RECIPES[model]), model, VERSION)
    for name in ("dev-a", "dev-b"):
        folder = work / name / "identity"
        folder.mkdir(parents=True)
        key = new_key()
        (folder / "device.key").write_bytes(key_pem(key))
        (folder / "device.crt").write_bytes(ca.issue_device_certificate(make_csr(key, name), name))
    # A imports the release from the repository folder, as from a stick (no health check:
    # the benchmark measures transport, not the model).
    pin_root(work / "dev-a" / "trust", repo.trusted_root_path())
    base, fetcher = fetcher_for(str(repo.root))
    manager = UpdateManager(
        ModelStore(work / "dev-a"), work / "dev-a" / "state.json", health_check=lambda _p: None
    )
    with ReleaseSource(base, work / "dev-a" / "trust", fetcher) as source:
        manager.update(source, model, VERSION)
    token = TokenStore(work / "tokens.json").issue("dev-b")
    return token, repo.manifest(model, VERSION).unique_chunks()


# --- the measurement -------------------------------------------------------------------


def fetch_all(url: str, fetcher: Any, chunks: dict[str, int]) -> float:
    """Seconds to fetch and verify every chunk through a one-source chain."""
    from edge_agent.updates.chunks import ChunkChain, PeerChunks

    chain = ChunkChain([PeerChunks(url, fetcher)])
    try:
        started = time.perf_counter()
        for sha, size in chunks.items():
            chain.chunk(sha, size)
        return time.perf_counter() - started
    finally:
        chain.close()


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    from edge_agent.updates.chunks import PeerFetcher
    from edge_agent.updates.fetchers import HttpFetcher

    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
        work = Path(tmp)
        print(f"publishing the {args.model} model and installing it on device A ...", flush=True)
        token, chunks = set_up(work, args.model)
        total = sum(chunks.values())
        ports = {"hub": free_port(), "peer": free_port()}
        servers = {
            kind: subprocess.Popen(
                [sys.executable, __file__, "--serve", kind, "--work", tmp, "--port", str(port)]
            )
            for kind, port in ports.items()
        }
        seconds: dict[str, list[float]] = {"hub": [], "peer": []}
        try:
            for kind, port in ports.items():
                wait_for_port(port, servers[kind])
            for run in range(args.repeats + 1):  # the first round warms both up
                for kind in ("hub", "peer"):
                    fetcher = (
                        HttpFetcher(token, ca_file=work / "ca" / "ca.crt")
                        if kind == "hub"
                        else PeerFetcher(device_tls(work, "dev-b"))
                    )
                    took = fetch_all(f"https://127.0.0.1:{ports[kind]}/", fetcher, chunks)
                    if run:
                        seconds[kind].append(took)
                    print(f"  {kind}: {mb(total) / took:.1f} MB/s", flush=True)
        finally:
            for proc in servers.values():
                proc.terminate()
                proc.wait(timeout=30)
    rates = {kind: [mb(total) / s for s in values] for kind, values in seconds.items()}
    hub_rate, peer_rate = median(rates["hub"]), median(rates["peer"])
    ratio = peer_rate / hub_rate
    return {
        "benchmark": "peers",
        "figures": {
            "peer_fetch_vs_hub": figure(ratio, f">= {TARGET_RATIO}", ratio >= TARGET_RATIO),
            "peer_fetch_mb_per_s": figure(peer_rate),
            "hub_fetch_mb_per_s": figure(hub_rate),
        },
        "reference": "the hub's artifact server (HTTPS, token), same chunks, same run, loopback",
        "model": {"recipe": args.model, "chunks": len(chunks), "bytes": total},
        "samples": {kind: [round(r, 2) for r in values] for kind, values in rates.items()},
        "cpus": os.cpu_count(),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default="small", choices=("small", "tiny"))
    parser.add_argument("--serve", choices=("hub", "peer"), help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve == "hub":
        serve_hub(args.work, args.port)
    elif args.serve == "peer":
        serve_peer(args.work, args.port)
    else:
        report(benchmark(args))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    sys.exit(main())

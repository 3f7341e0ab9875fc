"""Air-gap benchmark: how fast a USB bundle is written and imported, and how small it is.

One run, on one file system (a folder under --dir, /tmp by default), with a release made
of the tiny test model plus a --blob-mib random file (so there are bytes enough to time):

1. Export: `edge-provision usb export`'s code writes the bundle (copy phase, then the
   verification pass that re-reads the stick past the page cache). Compared with `cp -r`
   of the same files to the same file system, in the same run (target: copy phase >=
   0.8x cp's throughput).
2. Import: `edge-agent import`'s code copies the stick to staging with its checks (target:
   staging >= 0.8x cp). The whole import (staging, chunk store, assembly, health check)
   writes the bytes three times and loads the model; its throughput is reported beside.
3. Bytes on the stick for a site that already holds the previous release (the new one
   changes one small file) against the full release.
4. Peer fetch: bench/peers.py's benchmark, called in the same run (a device fetching the
   release's chunks from a site peer against the hub's artifact server on loopback, target
   >= 0.9x); --peer-model tiny for a quick run.

Each timed step runs --repeats times (median). Human-readable lines first; the last line is
one JSON object with every figure (bench/common.py's house style).

    .venv/bin/python bench/airgap.py [--blob-mib 256] [--repeats 3] [--dir /tmp]
                                     [--peer-model small] [--peer-repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import peers
from common import figure, median, report

PASS = b"benchmark passphrase"
DEVICE = "bench-device"


def _drop_caches(folder: Path) -> None:
    """Sync and drop `folder`'s pages, so every copy starts from the same state."""
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _variant(model: Path, folder: Path, max_length: int) -> Path:
    shutil.copytree(model, folder)
    config = json.loads((folder / "genai_config.json").read_text())
    config["search"]["max_length"] = max_length
    (folder / "genai_config.json").write_text(json.dumps(config, indent=4))
    return folder


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    from tuf.api.metadata import Metadata, Root

    from edge_agent.protocol.bundle import BUNDLE_DIR, BundleRelease
    from edge_agent.store import ModelStore
    from edge_agent.updates.manager import UpdateManager
    from edge_agent.updates.offline import import_bundle
    from edge_agent.updates.source import pin_root
    from hub.registry import synthetic
    from hub.registry.repository import ReleaseRepository
    from provisioning.ceremony import bundle_signer, init_root
    from provisioning.usb_export import export_bundle

    work = Path(tempfile.mkdtemp(prefix="airgap-bench-", dir=args.dir))
    try:
        model = work / "model"
        shutil.copytree(synthetic.build(synthetic.RECIPES["tiny"]), model)
        with (model / "blob.bin").open("wb") as handle:
            for _ in range(args.blob_mib):
                handle.write(os.urandom(1024 * 1024))
        init_root(work / "ceremony", work / "keys", [PASS, PASS], 2, PASS)
        repo = ReleaseRepository.create(
            work / "repo", work / "keys", root_metadata=work / "keys" / "1.root.json"
        )
        repo.publish(model, "tiny", "1.0.0")
        repo.publish(_variant(model, work / "v2", 99), "tiny", "2.0.0")
        root = Metadata[Root].from_file(str(repo.trusted_root_path())).signed
        signer = bundle_signer(next((work / "ceremony").glob("offline-bundle-*.pem")), PASS, root)

        def export(stick: Path, version: str, held: list[tuple[str, str]] | None) -> Any:
            return export_bundle(
                repo.root,
                stick,
                releases=[BundleRelease(model="tiny", version=version)],
                devices=[DEVICE],
                groups=[],
                site="bench",
                signers=[signer],
                held={DEVICE: held} if held is not None else None,
                validity=timedelta(days=30),
                progress=phases,
            )

        phase_times: dict[str, float] = {}
        phase_start: dict[str, float] = {}

        def phases(phase: str, done: int, total: int) -> None:
            phase_start.setdefault(phase, time.perf_counter())
            if done >= total:
                phase_times[phase] = time.perf_counter() - phase_start[phase]

        write_s, verify_s, export_s, cp_s, staging_s, import_s = [], [], [], [], [], []
        bundle_bytes = 0
        for n in range(args.repeats):
            stick = work / f"stick-{n}"
            _drop_caches(repo.root)
            phase_times.clear()
            phase_start.clear()
            started = time.perf_counter()
            summary = export(stick, "1.0.0", None)
            export_s.append(time.perf_counter() - started)
            write_s.append(phase_times["write"])
            verify_s.append(phase_times["verify"])
            bundle_bytes = summary.total_bytes

            _drop_caches(stick)
            copy = work / f"cp-{n}"
            started = time.perf_counter()
            # Neither side syncs inside the timed copy (the export syncs afterwards, in its
            # verification step): both are timed writing to the page cache.
            subprocess.run(["cp", "-r", str(stick / BUNDLE_DIR), str(copy)], check=True)
            cp_s.append(time.perf_counter() - started)
            shutil.rmtree(copy)

            device = work / f"device-{n}"
            pin_root(device / "trust", repo.trusted_root_path())
            _drop_caches(stick)
            marks: list[float] = []

            def staged(done: int, total: int, marks: list[float] = marks) -> None:
                if done >= total:
                    marks.append(time.perf_counter())

            started = time.perf_counter()
            report_ = import_bundle(
                stick,
                UpdateManager(ModelStore(device), device / "update-state.json"),
                trust_dir=device / "trust",
                data_dir=device,
                device_id=DEVICE,
                progress=staged,
            )
            import_s.append(time.perf_counter() - started)
            staging_s.append(marks[0] - started)
            assert not report_.errors, report_.errors
            shutil.rmtree(device)
            shutil.rmtree(stick)

        full = export(work / "full", "2.0.0", None)
        delta = export(work / "delta", "2.0.0", [("tiny", "1.0.0")])
    finally:
        shutil.rmtree(work, ignore_errors=True)

    mb = bundle_bytes / 1e6
    cp_rate = mb / median(cp_s)
    write_ratio = (mb / median(write_s)) / cp_rate
    staging_ratio = (mb / median(staging_s)) / cp_rate
    delta_ratio = delta.total_bytes / full.total_bytes
    print(f"bundle {mb:.1f} MB; cp -r {cp_rate:.0f} MB/s")
    print(
        f"export copy {mb / median(write_s):.0f} MB/s ({write_ratio:.2f}x cp); "
        f"with verification {mb / median(export_s):.0f} MB/s"
    )
    print(
        f"import staging {mb / median(staging_s):.0f} MB/s ({staging_ratio:.2f}x cp); "
        f"whole import {mb / median(import_s):.0f} MB/s"
    )
    print(f"stick for a site holding 1.0.0: {delta.total_bytes} of {full.total_bytes} bytes")
    # 4. After one device imported the stick, its site peers fetch from it: bench/peers.py's
    # own measurement (peer vs the hub's artifact server on loopback), run here.
    print("peer fetch (bench/peers.py) ...", flush=True)
    peer = peers.benchmark(argparse.Namespace(model=args.peer_model, repeats=args.peer_repeats))
    peer_ratio = peer["figures"]["peer_fetch_vs_hub"]
    return {
        "benchmark": "airgap",
        "figures": {
            "export_copy_vs_cp": figure(write_ratio, ">= 0.8", write_ratio >= 0.8),
            "import_staging_vs_cp": figure(staging_ratio, ">= 0.8", staging_ratio >= 0.8),
            "export_with_verify_vs_cp": figure((mb / median(export_s)) / cp_rate),
            "whole_import_vs_cp": figure((mb / median(import_s)) / cp_rate),
            "delta_stick_fraction": figure(delta_ratio),
            "peer_fetch_vs_hub": peer_ratio,
        },
        "details": {
            "bundle_bytes": bundle_bytes,
            "cp_s": [round(s, 3) for s in cp_s],
            "export_write_s": [round(s, 3) for s in write_s],
            "export_verify_s": [round(s, 3) for s in verify_s],
            "export_total_s": [round(s, 3) for s in export_s],
            "import_staging_s": [round(s, 3) for s in staging_s],
            "import_total_s": [round(s, 3) for s in import_s],
            "full_stick_bytes": full.total_bytes,
            "delta_stick_bytes": delta.total_bytes,
            "delta_chunk_bytes": delta.chunk_bytes,
            "full_chunk_bytes": full.chunk_bytes,
            "peer_fetch": {k: v for k, v in peer.items() if k != "benchmark"},
        },
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blob-mib", type=int, default=256, help="random bytes in the release")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each step")
    parser.add_argument("--dir", default=None, help="folder for the run (one file system)")
    parser.add_argument(
        "--peer-model", default="small", choices=("small", "tiny"), help="model the peers fetch"
    )
    parser.add_argument("--peer-repeats", type=int, default=5, help="timed peer fetch rounds")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.blob_mib < 1:
        parser.error("--repeats and --blob-mib must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    report(benchmark(parse_args(argv)))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # before the health check loads it
    sys.exit(main())

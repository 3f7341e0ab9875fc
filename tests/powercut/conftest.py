"""The forgetful disk: mount it, run a process on it, cut the power, read what survived."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.needs import need
from tests.powercut.forgetful_fs import READY

MOUNT_TIMEOUT_S = 10.0
_workers: list[subprocess.Popen[str]] = []  # killed when the test ends, whatever happened


def fuse_missing() -> str | None:
    """Why FUSE cannot be mounted here, or None."""
    if os.geteuid() != 0:
        return "mounting the forgetful disk needs root"
    if not Path("/dev/fuse").exists():
        return "no /dev/fuse"
    if shutil.which("fusermount3") is None:
        return "no fusermount3 (Debian package fuse3)"
    try:
        import mfusepy  # noqa: F401  (loads libfuse)
    except (ImportError, OSError, AttributeError) as exc:  # AttributeError: a wrong libfuse
        return f"mfusepy cannot load libfuse: {exc}"
    return None


class ForgetfulDisk:
    """One power-on of the disk: `seed` (a folder, all durable) mounted at `mount`."""

    def __init__(self, base: Path, seed: Path | None = None) -> None:
        self.mount = base / "mnt"
        self.image = base / "after-cut"
        self.log = base / "forgetful-fs.log"
        self.mount.mkdir(parents=True)
        command = [sys.executable, "-m", "tests.powercut.forgetful_fs", str(self.mount)]
        command += [str(self.image)] + ([str(seed)] if seed is not None else [])
        with self.log.open("w") as log:
            self.server = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                cwd=Path(__file__).resolve().parents[2],
            )
        deadline = time.monotonic() + MOUNT_TIMEOUT_S
        while not os.path.ismount(self.mount):
            if self.server.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"the forgetful disk did not mount: {self._stderr()}")
            time.sleep(0.02)

    def _stderr(self) -> str:
        return self.log.read_text()[-3000:]

    def cut(self, *processes: subprocess.Popen[str]) -> Path:
        """Power off now: what no fsync made durable is gone, the processes die. Returns the
        folder that holds what the disk has after the reboot."""
        assert self.server.stdin is not None and self.server.stdout is not None
        self.server.stdin.write("cut\n")
        self.server.stdin.flush()
        answer = self.server.stdout.readline().strip()
        for process in processes:
            process.kill()
            process.wait()
        self.close()
        assert answer == READY, f"the forgetful disk failed at the cut: {self._stderr()}"
        return self.image

    def close(self) -> None:
        if os.path.ismount(self.mount):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mount)], check=False)
        try:
            self.server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.server.kill()
            self.server.wait()
        for pipe in (self.server.stdin, self.server.stdout):
            if pipe is not None:
                pipe.close()


def start_worker(folder: Path, scenario: str, *args: str, **env: str) -> subprocess.Popen[str]:
    """A process of tests/powercut/workers.py writing in `folder`."""
    worker = subprocess.Popen(
        [sys.executable, "-m", "tests.powercut.workers", scenario, str(folder), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # after the cut it fails with EIO, by design
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, **env},
    )
    _workers.append(worker)
    return worker


@pytest.fixture
def forgetful_disk(tmp_path: Path) -> Iterator[Callable[..., ForgetfulDisk]]:
    """Mounts forgetful disks (each in a folder of its own) and unmounts any left over."""
    reason = fuse_missing()
    if reason is not None:
        need(False, f"power-cut tests need FUSE: {reason}")
    disks: list[ForgetfulDisk] = []

    def mount(seed: Path | None = None) -> ForgetfulDisk:
        disk = ForgetfulDisk(tmp_path / f"disk-{len(disks)}", seed)
        disks.append(disk)
        return disk

    yield mount
    while _workers:
        worker = _workers.pop()
        worker.kill()
        worker.wait()
        if worker.stdout is not None:
            worker.stdout.close()
    for disk in disks:
        disk.close()

"""Crash-safe file operations: a reader, or a crash, sees the old content or the new,
never a mix. Shared by the agent's store and the hub's repository."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from edge_agent import faults


def write_atomic(path: Path, data: bytes | memoryview, *, mode: int = 0o644) -> None:
    """Write `data` to `path` through a synced temporary sibling and one rename."""
    make_dirs(path.parent)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), mode)
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def swap_symlink(link: Path, target: str) -> None:
    """Point `link` at `target` in one rename (RAUC's `name.tmp-link` pattern)."""
    tmp = link.with_name(f"{link.name}.tmp-link")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(target)
    faults.checkpoint("link-staged")
    tmp.replace(link)
    fsync_dir(link.parent)


def make_dirs(folder: Path) -> None:
    """Create `folder` and missing parents, each durably: a file in a folder that a crash
    forgets is lost with it."""
    if folder.is_dir():
        return
    make_dirs(folder.parent)
    folder.mkdir(exist_ok=True)
    fsync_dir(folder.parent)


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable: the directory entry is data too."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

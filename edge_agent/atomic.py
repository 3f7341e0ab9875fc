"""Crash-safe file operations: a reader, or a crash, sees the old content or the new,
never a mix. Shared by the agent's store and the hub's repository."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Mapping
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


def replace_folder(link: Path, files: Mapping[str, tuple[bytes, int]]) -> None:
    """Make `link` name a folder holding exactly `files` (name -> content, mode), all at
    once: the files are written and synced in a new sibling folder, then one symlink swap
    points `link` at it. A reader, or a crash, sees the old set or the new, never a mix.

    A `link` that is still a plain folder (the layout before this) is first moved aside
    to `.<name>-legacy` and restored from there if a crash strikes before the swap."""
    parent = link.parent
    make_dirs(parent)
    legacy = parent / f".{link.name}-legacy"
    if not link.exists() and not link.is_symlink() and legacy.is_dir():
        legacy.rename(link)  # a crash interrupted an earlier migration
    old = link.resolve() if link.is_symlink() else None
    staged = Path(tempfile.mkdtemp(prefix=f".{link.name}-", dir=parent))
    try:
        staged.chmod(0o700)
        for name, (data, mode) in files.items():
            with (staged / name).open("xb") as out:
                os.fchmod(out.fileno(), mode)
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
        fsync_dir(staged)
        if link.is_dir() and not link.is_symlink():
            link.rename(legacy)
            fsync_dir(parent)
            old = legacy
        swap_symlink(link, staged.name)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    for gone in (old, legacy):
        if gone is not None and gone != staged:
            shutil.rmtree(gone, ignore_errors=True)

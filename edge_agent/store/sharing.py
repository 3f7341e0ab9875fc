"""Share bytes between model versions instead of copying them.

Two releases of a model usually differ in a few small files. A file identical to one an
installed version already holds becomes a hard link to it; where a link cannot be made
(another file system, a link limit, a file system without links) a reflink shares the
blocks, and a copy is the last resort. Installed model files are read-only and the store
never opens them for writing, so a file shared by two versions can never change under
either of them.
"""

from __future__ import annotations

import fcntl
import os
import stat
from enum import Enum
from pathlib import Path

# Linux's FICLONE ioctl (_IOW(0x94, 9, int)); `fcntl.FICLONE` exists from Python 3.12 on.
FICLONE = getattr(fcntl, "FICLONE", 0x40049409)
READ_ONLY = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH


class Shared(Enum):
    LINKED = "hard link"
    CLONED = "reflink"
    COPIED = "copy"


def make_read_only(path: Path) -> None:
    """Drop every write permission: a shared file must not change through any name."""
    path.chmod(READ_ONLY, follow_symlinks=False)


def share_file(source: Path, dest: Path) -> Shared:
    """Make `dest` (which must not exist) hold `source`'s bytes, sharing them if the file
    system can. `source` is made read-only first, since a link shares its permissions."""
    make_read_only(source)
    try:
        os.link(source, dest)
        return Shared.LINKED
    except OSError:
        pass  # EXDEV, EMLINK, EPERM, a file system without hard links: share blocks instead
    with source.open("rb") as src, dest.open("xb") as out:
        try:
            fcntl.ioctl(out.fileno(), FICLONE, src.fileno())
            how = Shared.CLONED
        except OSError:
            copy_range(src.fileno(), out.fileno(), 0, os.fstat(src.fileno()).st_size)
            how = Shared.COPIED
        out.flush()
        os.fsync(out.fileno())
    make_read_only(dest)
    return how


def copy_range(src_fd: int, dst_fd: int, offset: int, size: int) -> None:
    """Append `size` bytes of `src_fd` from `offset` to `dst_fd`'s current position.

    copy_file_range lets the kernel share the blocks (btrfs, XFS) or copy them without a
    round trip through Python; a plain copy serves file systems that refuse it."""
    done = 0
    try:
        while done < size:
            n = os.copy_file_range(src_fd, dst_fd, size - done, offset + done)
            if n == 0:
                break
            done += n
    except OSError:
        pass  # EXDEV, ENOSYS, EINVAL (FUSE, older kernels): copy the rest by hand
    if done < size:
        with os.fdopen(os.dup(src_fd), "rb") as src, os.fdopen(os.dup(dst_fd), "wb") as dst:
            src.seek(offset + done)
            remaining = size - done
            while remaining > 0:
                block = src.read(min(remaining, 1 << 20))
                if not block:
                    raise OSError(f"{src.name} ended {remaining} bytes early")
                dst.write(block)
                remaining -= len(block)
            dst.flush()

"""A FUSE filesystem that forgets, at a power cut, every write no fsync made durable.

    python -m tests.powercut.forgetful_fs MOUNTPOINT IMAGE [SEED]

Everything lives in memory. Each file keeps its live bytes and the bytes of its last
fsync/fdatasync; each folder keeps its live entries and the entries of its last fsync of
the folder itself (so a create, rename, unlink or mkdir is durable only once its folder is
synced, as POSIX promises and as LazyFS models it). SEED, a folder, is loaded as durable.

Standard input is the power switch: the line `cut` freezes the filesystem (every later
operation fails with EIO, as on a machine without power), writes what is durable to the
folder IMAGE (the disk after the reboot) and answers `cut done`. The process ends when the
mount is unmounted.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mfusepy
from mfusepy import FuseOSError, Operations

READY = "cut done"


@dataclass(eq=False)
class Node:
    mode: int
    data: bytearray = field(default_factory=bytearray)  # a file's live bytes
    synced: bytes = b""  # a file's bytes as of its last fsync
    entries: dict[str, Node] = field(default_factory=dict)  # a folder's live entries
    synced_entries: dict[str, Node] = field(default_factory=dict)  # as of its last fsync
    target: str = ""  # a symlink's target: fixed at creation, durable with its entry
    links: int = 1  # live names of a file (hard links)
    mtime_ns: int = field(default_factory=time.time_ns)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


def _seeded(path: Path) -> Node:
    """A node and everything under it, all durable."""
    info = path.lstat()
    node = Node(mode=info.st_mode)
    if path.is_symlink():
        node.target = os.readlink(path)
    elif path.is_dir():
        node.entries = {child.name: _seeded(child) for child in path.iterdir()}
        node.synced_entries = dict(node.entries)
    else:
        node.data = bytearray(path.read_bytes())
        node.synced = bytes(node.data)
    return node


def _write_image(node: Node, path: Path) -> None:
    """What survives the cut: durable entries, from the root down, with durable bytes."""
    if stat.S_ISLNK(node.mode):
        path.symlink_to(node.target)
    elif node.is_dir:
        path.mkdir(exist_ok=True)
        for name, child in node.synced_entries.items():
            _write_image(child, path / name)
        path.chmod(stat.S_IMODE(node.mode))
    else:
        path.write_bytes(node.synced)
        path.chmod(stat.S_IMODE(node.mode))


class ForgetfulFS(Operations):  # type: ignore[misc]
    use_ns = True

    def __init__(self, root: Node) -> None:
        self.root = root
        self._mutex = threading.Lock()
        self.handles: dict[int, Node] = {}
        self.next_handle = 1
        self.powered = True

    # --- helpers -------------------------------------------------------------------------

    def _check_power(self) -> None:
        if not self.powered:
            raise FuseOSError(errno.EIO)

    def _lookup(self, path: str) -> Node:
        node = self.root
        for part in (p for p in path.split("/") if p):
            if not node.is_dir or part not in node.entries:
                raise FuseOSError(errno.ENOENT)
            node = node.entries[part]
        return node

    def _parent(self, path: str) -> tuple[Node, str]:
        head, _, name = path.rstrip("/").rpartition("/")
        parent = self._lookup(head or "/")
        if not parent.is_dir:
            raise FuseOSError(errno.ENOTDIR)
        return parent, name

    def _handle(self, node: Node) -> int:
        handle = self.next_handle
        self.next_handle += 1
        self.handles[handle] = node
        return handle

    def _node(self, path: str | None, fh: int | None) -> Node:
        if fh and fh in self.handles:
            return self.handles[fh]
        if path is None:
            raise FuseOSError(errno.EBADF)
        return self._lookup(path)

    # --- the power switch ----------------------------------------------------------------

    def cut(self, image: Path) -> None:
        with self._mutex:
            self.powered = False
            _write_image(self.root, image)

    # --- metadata ------------------------------------------------------------------------

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        with self._mutex:
            node = self._node(path, fh)
            size = len(node.data) if not node.is_dir else 4096
            if stat.S_ISLNK(node.mode):
                size = len(node.target.encode())
            subdirs = sum(1 for child in node.entries.values() if child.is_dir)
            return {
                "st_mode": node.mode,
                "st_nlink": 2 + subdirs if node.is_dir else node.links,
                "st_size": size,
                "st_uid": os.getuid(),
                "st_gid": os.getgid(),
                "st_atime": node.mtime_ns,
                "st_mtime": node.mtime_ns,
                "st_ctime": node.mtime_ns,
                "st_blocks": (size + 511) // 512,
            }

    def access(self, path: str, amode: int) -> int:
        with self._mutex:
            self._lookup(path)
        return 0

    def chmod(self, path: str, mode: int) -> int:
        with self._mutex:
            self._check_power()
            node = self._lookup(path)
            node.mode = stat.S_IFMT(node.mode) | stat.S_IMODE(mode)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        with self._mutex:
            self._check_power()
            self._lookup(path).mtime_ns = times[1] if times else time.time_ns()
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        blocks = 1 << 22  # 16 GiB of 4 KiB blocks: room for anything a test writes
        return {
            "f_bsize": 4096,
            "f_frsize": 4096,
            "f_blocks": blocks,
            "f_bfree": blocks,
            "f_bavail": blocks,
            "f_files": 1 << 20,
            "f_ffree": 1 << 20,
            "f_favail": 1 << 20,
            "f_namemax": 255,
        }

    # --- folders -------------------------------------------------------------------------

    def readdir(self, path: str, fh: int) -> list[str]:
        with self._mutex:
            node = self._lookup(path)
            return [".", "..", *node.entries]

    def mkdir(self, path: str, mode: int) -> int:
        with self._mutex:
            self._check_power()
            parent, name = self._parent(path)
            if name in parent.entries:
                raise FuseOSError(errno.EEXIST)
            parent.entries[name] = Node(mode=stat.S_IFDIR | stat.S_IMODE(mode))
        return 0

    def rmdir(self, path: str) -> int:
        with self._mutex:
            self._check_power()
            parent, name = self._parent(path)
            node = self._lookup(path)
            if not node.is_dir:
                raise FuseOSError(errno.ENOTDIR)
            if node.entries:
                raise FuseOSError(errno.ENOTEMPTY)
            del parent.entries[name]
        return 0

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        with self._mutex:
            self._check_power()
            node = self._lookup(path)
            node.synced_entries = dict(node.entries)
        return 0

    # --- entries -------------------------------------------------------------------------

    def symlink(self, target: str, source: str) -> int:
        """mfusepy's order: the link's path first, what it points to second."""
        with self._mutex:
            self._check_power()
            parent, name = self._parent(target)
            if name in parent.entries:
                raise FuseOSError(errno.EEXIST)
            parent.entries[name] = Node(mode=stat.S_IFLNK | 0o777, target=source)
        return 0

    def readlink(self, path: str) -> str:
        with self._mutex:
            return self._lookup(path).target

    def link(self, target: str, source: str) -> int:
        """mfusepy's order: the new name first, the existing file second."""
        with self._mutex:
            self._check_power()
            node = self._lookup(source)
            if node.is_dir:
                raise FuseOSError(errno.EPERM)
            parent, name = self._parent(target)
            if name in parent.entries:
                raise FuseOSError(errno.EEXIST)
            parent.entries[name] = node
            node.links += 1
        return 0

    def unlink(self, path: str) -> int:
        with self._mutex:
            self._check_power()
            parent, name = self._parent(path)
            if name not in parent.entries:
                raise FuseOSError(errno.ENOENT)
            if parent.entries[name].is_dir:
                raise FuseOSError(errno.EISDIR)
            parent.entries.pop(name).links -= 1  # open handles keep the node
        return 0

    def rename(self, old: str, new: str) -> int:
        with self._mutex:
            self._check_power()
            old_parent, old_name = self._parent(old)
            new_parent, new_name = self._parent(new)
            node = old_parent.entries.get(old_name)
            if node is None:
                raise FuseOSError(errno.ENOENT)
            replaced = new_parent.entries.get(new_name)
            if replaced is not None and replaced is not node:
                if replaced.is_dir and not node.is_dir:
                    raise FuseOSError(errno.EISDIR)
                if node.is_dir and not replaced.is_dir:
                    raise FuseOSError(errno.ENOTDIR)
                if replaced.is_dir and replaced.entries:
                    raise FuseOSError(errno.ENOTEMPTY)
            if replaced is not None and replaced is not node:
                replaced.links -= 1
            del old_parent.entries[old_name]
            new_parent.entries[new_name] = node
        return 0

    # --- files ---------------------------------------------------------------------------

    def create(self, path: str, mode: int, flags: int = 0) -> int:
        with self._mutex:
            self._check_power()
            parent, name = self._parent(path)
            node = parent.entries.get(name)
            if node is None:
                node = Node(mode=stat.S_IFREG | stat.S_IMODE(mode))
                parent.entries[name] = node
            elif flags & os.O_EXCL:
                raise FuseOSError(errno.EEXIST)
            return self._handle(node)

    def open(self, path: str, flags: int) -> int:
        with self._mutex:
            if flags & (os.O_WRONLY | os.O_RDWR):
                self._check_power()
            return self._handle(self._lookup(path))

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        with self._mutex:
            self._check_power()
            return bytes(self._node(path, fh).data[offset : offset + size])

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        with self._mutex:
            self._check_power()
            node = self._node(path, fh)
            if offset > len(node.data):
                node.data.extend(bytes(offset - len(node.data)))
            node.data[offset : offset + len(data)] = data
            node.mtime_ns = time.time_ns()
            return len(data)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        with self._mutex:
            self._check_power()
            node = self._node(path, fh)
            if length < len(node.data):
                del node.data[length:]
            else:
                node.data.extend(bytes(length - len(node.data)))
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        with self._mutex:
            self._check_power()
            node = self._node(path, fh)
            node.synced = bytes(node.data)
        return 0

    def flush(self, path: str, fh: int) -> int:
        return 0

    def release(self, path: str, fh: int) -> int:
        with self._mutex:
            self.handles.pop(fh, None)
        return 0


def _power_switch(fs: ForgetfulFS, image: Path) -> None:
    for line in sys.stdin:
        if line.strip() == "cut":
            fs.cut(image)
            print(READY, flush=True)


def main(argv: list[str]) -> None:
    mountpoint, image = argv[0], Path(argv[1])
    seed = Path(argv[2]) if len(argv) > 2 else None
    root = _seeded(seed) if seed is not None else Node(mode=stat.S_IFDIR | 0o755)
    root.mode = stat.S_IFDIR | 0o755
    fs = ForgetfulFS(root)
    threading.Thread(target=_power_switch, args=(fs, image), daemon=True).start()
    mfusepy.FUSE(
        fs,
        mountpoint,
        foreground=True,
        nothreads=True,
        hard_remove=True,  # an unlinked file stays open through its handle
        attr_timeout=0,
        entry_timeout=0,
        negative_timeout=0,
    )


if __name__ == "__main__":
    main(sys.argv[1:])

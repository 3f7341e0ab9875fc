"""Reading a USB stick that may be hostile, into a private staging folder.

Only files the signed authorisation lists are read, each opened one path component at a
time without following links (O_NOFOLLOW on every folder and the file), and only if it is
a regular file with a single link: symlinks, hard links, device files and FIFOs are refused
(a FIFO is opened non-blocking, so it cannot stall the import). A file is copied up to
its listed size, hashed while copied, and refused when it is longer, shorter (pulled or
truncated mid-copy) or different. Destinations are made with O_EXCL inside the staging
folder, so nothing is ever written outside it. After the copy the stick is not read again:
it may change, the staging copy is what gets verified and installed.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from pathlib import Path

from edge_agent.updates.errors import Refused

BLOCK = 1024 * 1024
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class StickRefused(Refused):
    """The stick holds something this agent will not read; nothing was installed."""


def open_beneath(base: Path, relative: str) -> int:
    """A read descriptor of `base`/`relative`, a regular file with one link, reached without
    following any link on the way."""
    parts = relative.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise StickRefused(f"{relative!r} is not a plain path inside the bundle")
    try:
        folder = os.open(base, _DIR_FLAGS)
    except OSError as exc:
        raise StickRefused(f"{base}: cannot open the bundle folder ({exc.strerror})") from None
    try:
        for part in parts[:-1]:
            try:
                inner = os.open(part, _DIR_FLAGS, dir_fd=folder)
            except OSError as exc:
                raise StickRefused(
                    f"{base / relative}: {part!r} is not a plain folder on the stick "
                    f"({exc.strerror}; a link is refused)"
                ) from None
            os.close(folder)
            folder = inner
        try:
            fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=folder)
        except OSError as exc:
            raise StickRefused(
                f"{base / relative}: cannot open it as a plain file ({exc.strerror}; "
                "a link is refused)"
            ) from None
    finally:
        os.close(folder)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        kind = "a hard-linked file" if stat.S_ISREG(info.st_mode) else "not a regular file"
        raise StickRefused(f"{base / relative}: {kind} on the stick; the bundle is refused")
    os.set_blocking(fd, True)
    return fd


def read_capped(base: Path, relative: str, max_bytes: int) -> bytes:
    """A small file's bytes (the authorisation), refusing one over `max_bytes`."""
    fd = open_beneath(base, relative)
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise StickRefused(f"{base / relative} is larger than {max_bytes} bytes; refused")
    return data


def copy_verified(
    base: Path,
    relative: str,
    staging: Path,
    size: int,
    sha256: str,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Copy one listed file into `staging`, exactly `size` bytes hashing to `sha256`."""
    source = open_beneath(base, relative)
    destination = staging.joinpath(*relative.split("/"))
    destination.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    digest = hashlib.sha256()
    copied = 0
    with os.fdopen(source, "rb", buffering=0) as reader:
        if os.fstat(reader.fileno()).st_size != size:
            raise StickRefused(
                f"{base / relative} is {os.fstat(reader.fileno()).st_size} bytes, the "
                f"authorisation lists {size}: the stick was altered or is damaged"
            )
        out = os.open(
            destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        with os.fdopen(out, "wb") as writer:
            while copied <= size:
                block = reader.read(min(BLOCK, size + 1 - copied))
                if not block:
                    break
                digest.update(block)
                writer.write(block)
                copied += len(block)
                if progress is not None:
                    progress(len(block))
    if copied != size:
        raise StickRefused(
            f"{base / relative}: read {copied} bytes, the authorisation lists {size} "
            "(the stick was pulled or the file changed during the copy); import again"
        )
    if digest.hexdigest() != sha256:
        raise StickRefused(
            f"{base / relative}: its bytes do not match the signed authorisation; the stick "
            "was altered or is damaged"
        )

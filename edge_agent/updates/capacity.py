"""Will a release fit on this device? Asked before the first byte of it is written.

A full disk or a file name the file system cannot hold would otherwise surface as an OS
error halfway through a download or an install. Both are cheap to check up front: free
space (shutil.disk_usage) against what the manifest needs, and each name against the
limits the file system reports (os.pathconf NAME_MAX / PATH_MAX).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from edge_agent.protocol import ReleaseManifest
from edge_agent.updates.errors import NoRoom

MARGIN_FRACTION = 0.05  # the file system's own overhead (blocks, directory entries)
MARGIN_BYTES = 256 * 1024  # and the metadata the update writes beside the files


def needed_with_margin(payload: int) -> int:
    return payload + int(payload * MARGIN_FRACTION) + MARGIN_BYTES


def check_space(folder: Path, payload: int, what: str) -> None:
    """Refuse when the file system of `folder` has less room than `payload` plus a margin."""
    free = shutil.disk_usage(_existing(folder)).free
    needed = needed_with_margin(payload)
    if free < needed:
        raise NoRoom(
            f"not enough disk space to {what}: {_mib(needed)} needed (with a margin), "
            f"{_mib(free)} free in {folder}; free some space (`edge-agent models` lists "
            "the installed versions) and update again"
        )


def check_names(version_folder: Path, manifest: ReleaseManifest) -> None:
    """Refuse file names or paths that the file system holding `version_folder` cannot
    create (the installed folder and its staging twin have names of the same length)."""
    probe = _existing(version_folder)
    name_max = os.pathconf(probe, "PC_NAME_MAX")
    path_max = os.pathconf(probe, "PC_PATH_MAX")
    for entry in manifest.files:
        for part in entry.path.split("/"):
            if len(os.fsencode(part)) > name_max:
                raise NoRoom(
                    f"{manifest.model} {manifest.version} names a file this device's file "
                    f"system cannot hold: {part[:40]!r}... is {len(os.fsencode(part))} bytes, "
                    f"the limit here is {name_max}; nothing was written. Ask the publisher "
                    "for a release with shorter names"
                )
        full = os.fsencode(str(version_folder / entry.path))
        if len(full) >= path_max:
            raise NoRoom(
                f"{manifest.model} {manifest.version}: the path of {entry.path[:40]!r}... "
                f"would be {len(full)} bytes here, the limit is {path_max}; nothing was "
                "written. Move the store to a shorter folder or ask for shorter names"
            )


def _existing(folder: Path) -> Path:
    """The nearest folder that exists: the one a new folder would be created on."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"

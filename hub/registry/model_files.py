"""The files of a model folder that a release carries, checked before anything is written."""

from __future__ import annotations

import os
from pathlib import Path

from edge_agent.runtime import ModelFolderError, inspect_model_folder
from hub.registry.errors import ReleaseRefused


def list_model_files(model_dir: Path) -> list[tuple[str, Path]]:
    """Every regular file under `model_dir` as (relative POSIX path, path), sorted.

    Symlinks are refused rather than followed: a release must carry the bytes it was
    tested with, not whatever a link points to when the chunks are cut.
    """
    try:
        inspect_model_folder(model_dir)
    except ModelFolderError as exc:
        raise ReleaseRefused(f"not a model folder: {exc}") from None
    return list_release_files(model_dir)


def list_release_files(folder: Path) -> list[tuple[str, Path]]:
    """Every regular file under `folder`, as list_model_files but for any release kind."""
    if not folder.is_dir():
        raise ReleaseRefused(f"{folder}: not a folder")
    found: list[tuple[str, Path]] = []
    _walk(folder, folder, found)
    return sorted(found)


def _walk(top: Path, folder: Path, found: list[tuple[str, Path]]) -> None:
    with os.scandir(folder) as entries:
        for entry in entries:
            path = Path(entry.path)
            relative = path.relative_to(top).as_posix()
            if entry.is_symlink():
                raise ReleaseRefused(
                    f"{path}: is a symlink; copy the file it points to into the model folder"
                )
            if entry.is_dir(follow_symlinks=False):
                _walk(top, path, found)
            elif entry.is_file(follow_symlinks=False):
                found.append((relative, path))
            else:
                raise ReleaseRefused(f"{path}: not a regular file; remove it from the folder")

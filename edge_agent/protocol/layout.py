"""Where things live in a release repository, served over HTTP or copied to a USB stick.

    <root>/metadata/              TUF metadata: N.root.json, timestamp.json,
                                  N.snapshot.json, N.targets.json (consistent snapshots)
    <root>/targets/               TUF targets, stored under their hash as TUF clients ask:
        <sha256>.index.json         target `index.json`: every model's releases
        <model>/<version>/<sha256>.manifest.json
                                    target `<model>/<version>/manifest.json`: one release
    <root>/chunks/<aa>/<sha256>   content-addressed chunks, verified against a manifest

Only these three folders are served or copied to a USB stick; anything else under the
root (the hub's own settings, locks, staging) stays where it is.

Chunks are not TUF targets (a model has hundreds); the manifest that lists their hashes
is, so a chunk is trusted exactly when the signed manifest names its hash.
"""

from __future__ import annotations

import re

METADATA_DIR = "metadata"
TARGETS_DIR = "targets"
CHUNKS_DIR = "chunks"
SERVED_DIRS = (METADATA_DIR, TARGETS_DIR, CHUNKS_DIR)
INDEX_TARGET = "index.json"

SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
VERSION_TEXT = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$")


def manifest_target(model: str, version: str) -> str:
    if not MODEL_NAME.fullmatch(model):
        raise ValueError(f"invalid model name {model!r}")
    if not VERSION_TEXT.fullmatch(version):
        raise ValueError(f"invalid version {version!r}")
    return f"{model}/{version}/manifest.json"


def target_file(target: str, sha256: str) -> str:
    """Where a target's bytes are stored under the root: its hash before its name."""
    dirname, _sep, basename = target.rpartition("/")
    return (
        f"{TARGETS_DIR}/{dirname}/{sha256}.{basename}"
        if dirname
        else (f"{TARGETS_DIR}/{sha256}.{basename}")
    )


def chunk_path(sha256: str) -> str:
    """Relative path of a chunk under the repository root."""
    if not SHA256_HEX.fullmatch(sha256):
        raise ValueError(f"invalid chunk hash {sha256!r}")
    return f"{CHUNKS_DIR}/{sha256[:2]}/{sha256}"

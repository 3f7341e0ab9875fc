"""Release manifests refuse what could escape the model folder or lie about sizes."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from edge_agent.protocol import ChunkRef, FileEntry, ReleaseIndex, ReleaseManifest

H = hashlib.sha256(b"x").hexdigest()


def entry(path: str, size: int = 1, chunk_size: int = 1) -> dict[str, object]:
    return {"path": path, "size": size, "sha256": H, "chunks": [{"sha256": H, "size": chunk_size}]}


@pytest.mark.parametrize("path", ["../evil", "/etc/passwd", "a/../../b", "a//b", "./a", "a\\b", ""])
def test_paths_that_escape_are_refused(path: str) -> None:
    with pytest.raises(ValidationError, match="must be relative"):
        FileEntry.model_validate(entry(path))


def test_chunks_must_cover_the_file() -> None:
    with pytest.raises(ValidationError, match="add up to 1 bytes, not 5"):
        FileEntry.model_validate(entry("w", size=5))


def test_oversized_chunk_is_refused() -> None:
    with pytest.raises(ValidationError):
        ChunkRef(sha256=H, size=1 << 30)


def test_unknown_fields_survive_a_round_trip() -> None:
    data = {"model": "m", "version": "1.0.0", "files": [entry("w")], "signed_by_future": 3}
    manifest = ReleaseManifest.model_validate(data)
    assert '"signed_by_future":3' in manifest.model_dump_json()


def test_newer_schema_is_refused_with_advice() -> None:
    data = {"schema_version": 2, "model": "m", "version": "1.0.0", "files": [entry("w")]}
    with pytest.raises(ValidationError, match="update the agent first"):
        ReleaseManifest.model_validate(data)


def test_file_and_folder_of_the_same_name() -> None:
    data = {"model": "m", "version": "1.0.0", "files": [entry("a"), entry("a/b")]}
    with pytest.raises(ValidationError, match="both a file and a folder"):
        ReleaseManifest.model_validate(data)


def test_index_orders_versions_semantically() -> None:
    index = ReleaseIndex(models={"m": {"1.10.0": "x", "1.9.0": "y", "1.2.0": "z"}})
    assert index.latest("m") == "1.10.0"


@given(st.text(max_size=30))
def test_any_path_is_either_refused_or_safe(path: str) -> None:
    try:
        FileEntry.model_validate(entry(path))
    except ValidationError:
        return
    assert not path.startswith("/")
    assert ".." not in path.split("/")


def test_a_trailing_newline_is_not_a_valid_name_hash_or_version() -> None:
    from edge_agent.protocol import chunk_path, manifest_target

    with pytest.raises(ValueError, match="invalid model name"):
        manifest_target("tiny\n", "1.0.0")
    with pytest.raises(ValueError, match="invalid chunk hash"):
        chunk_path(H + "\n")
    with pytest.raises(ValidationError):
        ReleaseManifest.model_validate({"model": "m", "version": "1.0.0\n", "files": [entry("w")]})

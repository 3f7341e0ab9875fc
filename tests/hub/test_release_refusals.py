"""Bad releases are refused with a message that says why, and change nothing."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.registry.errors import ReleaseRefused, SigningKeyError
from hub.registry.repository import ReleaseRepository


def snapshot_of(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


@pytest.fixture
def published(repo: ReleaseRepository, tiny_model_dir: Path) -> Iterator[ReleaseRepository]:
    repo.publish(tiny_model_dir, "tiny", "1.1.0")
    before = snapshot_of(repo.root)
    yield repo
    assert snapshot_of(repo.root) == before, "a refused release changed the repository"


@pytest.mark.parametrize(
    ("model", "version", "message"),
    [
        ("tiny", "1.1.0", "already published"),
        ("tiny", "1.1", "already published"),
        ("tiny", "1.0.9", r"not newer than 1\.1\.0"),
        ("Tiny", "2.0.0", "invalid model name"),
        ("tiny", "../2", "invalid version"),
        ("tiny", "two", "versions look like"),
    ],
)
def test_names_and_versions(
    published: ReleaseRepository, tiny_model_dir: Path, model: str, version: str, message: str
) -> None:
    with pytest.raises(ReleaseRefused, match=message) as refused:
        published.publish(tiny_model_dir, model, version)
    if "version" in message:  # a bad version is not blamed on the model's name
        assert "model name" not in str(refused.value)


def test_a_folder_that_is_not_a_model(published: ReleaseRepository, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ReleaseRefused, match=r"not a model folder: .*genai_config\.json"):
        published.publish(tmp_path, "tiny", "2.0.0")
    with pytest.raises(ReleaseRefused, match="no such folder"):
        published.publish(tmp_path / "missing", "tiny", "2.0.0")


def test_a_symlink_in_the_folder(
    published: ReleaseRepository, tiny_model_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "extra").mkdir()
    (folder / "extra" / "notes.txt").symlink_to("/etc/hostname")
    with pytest.raises(ReleaseRefused, match=r"extra/notes\.txt: is a symlink"):
        published.publish(folder, "tiny", "2.0.0")


def test_a_file_name_a_device_could_not_store(
    published: ReleaseRepository, tiny_model_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "weights\\..\\x").write_bytes(b"new bytes no chunk holds yet")
    with pytest.raises(ReleaseRefused, match="must be relative and stay inside the model"):
        published.publish(folder, "tiny", "2.0.0")


def test_a_fifo_in_the_folder(
    published: ReleaseRepository, tiny_model_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    os.mkfifo(folder / "pipe")
    with pytest.raises(ReleaseRefused, match="pipe: not a regular file"):
        published.publish(folder, "tiny", "2.0.0")


def test_a_missing_signing_key(published: ReleaseRepository, tiny_model_dir: Path) -> None:
    key = next(published.keys_dir.glob("targets-*.pem"))
    key.rename(key.with_suffix(".away"))
    with pytest.raises(SigningKeyError, match=rf"{key.name}: the targets signing key is missing"):
        published.publish(tiny_model_dir, "tiny", "2.0.0")
    key.with_suffix(".away").rename(key)


def test_a_signing_key_others_can_read(published: ReleaseRepository, tiny_model_dir: Path) -> None:
    key = next(published.keys_dir.glob("snapshot-*.pem"))
    key.chmod(0o644)
    with pytest.raises(SigningKeyError, match="chmod 600"):
        published.publish(tiny_model_dir, "tiny", "2.0.0")
    key.chmod(0o600)


def test_rotation_needs_the_offline_root_keys(published: ReleaseRepository) -> None:
    root_keys = published.keys_dir / "root-keys"
    root_keys.rename(published.keys_dir.parent / "offline")
    before = sorted(p.name for p in published.keys_dir.iterdir())
    with pytest.raises(SigningKeyError, match="bring the offline root keys back"):
        published.rotate_online_key("timestamp")
    assert sorted(p.name for p in published.keys_dir.iterdir()) == before
    (published.keys_dir.parent / "offline").rename(root_keys)
    with pytest.raises(ValueError, match="key ceremony"):
        published.rotate_online_key("root")

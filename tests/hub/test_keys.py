"""Signing keys: private files, clear errors, root thresholds with keys offline."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner

from hub.registry.errors import SigningKeyError
from hub.registry.keys import KeyStore
from hub.registry.repository import ReleaseRepository


def test_generated_keys_are_private_and_load_back(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys")
    signer = store.generate("targets")
    path = store.path_for("targets", signer.public_key.keyid)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    loaded = store.load("targets", signer.public_key)
    assert loaded.public_key == signer.public_key
    root = store.generate("root")
    assert store.path_for("root", root.public_key.keyid).parent == tmp_path / "keys" / "root-keys"


def test_a_garbled_key_file_is_named(tmp_path: Path) -> None:
    store = KeyStore(tmp_path)
    signer = store.generate("snapshot")
    path = store.path_for("snapshot", signer.public_key.keyid)
    path.write_bytes(b"-----BEGIN PRIVATE KEY-----\nbroken\n")
    with pytest.raises(SigningKeyError, match=rf"{path}: not an unencrypted PEM private key"):
        store.load("snapshot", signer.public_key)


def test_a_key_that_is_not_the_one_the_root_names(tmp_path: Path) -> None:
    store = KeyStore(tmp_path)
    signer = store.generate("timestamp")
    other = CryptoSigner.generate_ed25519()
    store.path_for("timestamp", signer.public_key.keyid).write_bytes(other.private_bytes)
    with pytest.raises(SigningKeyError, match="does not match key"):
        store.load("timestamp", signer.public_key)


def test_a_missing_root_key_points_at_the_offline_folder(tmp_path: Path) -> None:
    store = KeyStore(tmp_path)
    signer = store.generate("root")
    store.path_for("root", signer.public_key.keyid).unlink()
    with pytest.raises(SigningKeyError, match="root keys are kept offline: copy the root-keys/"):
        store.load("root", signer.public_key)


def test_rotation_needs_the_root_threshold_not_every_root_key(tmp_path: Path) -> None:
    repo = ReleaseRepository.create(
        tmp_path / "repo", tmp_path / "keys", root_keys=3, root_threshold=2
    )
    away = tmp_path / "away"
    away.mkdir()
    root_keys = sorted((tmp_path / "keys" / "root-keys").iterdir())
    root_keys[0].rename(away / root_keys[0].name)
    repo.rotate_online_key("timestamp")  # two of three root keys are enough
    root_keys[1].rename(away / root_keys[1].name)
    with pytest.raises(SigningKeyError, match="needs 2 root keys"):
        repo.rotate_online_key("timestamp")
    assert not (repo.root / "metadata" / "3.root.json").exists()

"""The release repository: real TUF metadata, checked by python-tuf's own client."""

from __future__ import annotations

import hashlib
import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, Root

from edge_agent.protocol import INDEX_TARGET, ReleaseIndex, ReleaseManifest, chunk_path
from hub.registry.errors import ReleaseNotFound, RepositoryStateError
from hub.registry.repository import Expiry, ReleaseRepository
from tests.hub.conftest import fresh_updater


def chunk_files(repo: ReleaseRepository) -> set[str]:
    return {p.name for p in (repo.root / "chunks").rglob("*") if p.is_file()}


def rebuild(repo: ReleaseRepository, manifest: ReleaseManifest, out: Path) -> None:
    """Put a release back together from its chunks, checking every hash on the way."""
    for entry in manifest.files:
        data = b""
        for chunk in entry.chunks:
            piece = (repo.root / chunk_path(chunk.sha256)).read_bytes()
            assert hashlib.sha256(piece).hexdigest() == chunk.sha256
            data += piece
        assert hashlib.sha256(data).hexdigest() == entry.sha256
        (out / entry.path).parent.mkdir(parents=True, exist_ok=True)
        (out / entry.path).write_bytes(data)


def test_create_lays_out_signed_metadata_and_private_keys(tmp_path: Path) -> None:
    repo = ReleaseRepository.create(
        tmp_path / "repo", tmp_path / "keys", root_keys=3, root_threshold=2
    )
    names = sorted(p.name for p in (repo.root / "metadata").iterdir())
    assert names == ["1.root.json", "1.snapshot.json", "1.targets.json", "timestamp.json"]
    assert repo.trusted_root_path() == repo.root / "metadata" / "1.root.json"
    root = Metadata[Root].from_file(str(repo.trusted_root_path())).signed
    assert root.consistent_snapshot is True
    assert root.roles["root"].threshold == 2
    assert len(root.roles["root"].keyids) == 3
    root_keys = sorted((tmp_path / "keys" / "root-keys").iterdir())
    online_keys = sorted((tmp_path / "keys").glob("*.pem"))
    assert len(root_keys) == 3
    assert [p.name.split("-")[0] for p in online_keys] == ["snapshot", "targets", "timestamp"]
    for key in [*root_keys, *online_keys]:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert repo.index() == ReleaseIndex()
    assert ReleaseRepository.open(repo.root, repo.keys_dir).index() == ReleaseIndex()


def test_create_refuses_an_existing_repository(repo: ReleaseRepository) -> None:
    before = (repo.root / "metadata" / "timestamp.json").read_bytes()
    with pytest.raises(RepositoryStateError, match="already holds a release repository"):
        ReleaseRepository.create(repo.root, repo.keys_dir)
    assert (repo.root / "metadata" / "timestamp.json").read_bytes() == before


def test_open_refuses_a_folder_without_a_repository(tmp_path: Path) -> None:
    with pytest.raises(RepositoryStateError, match="edge-hub repo init"):
        ReleaseRepository.open(tmp_path, tmp_path / "keys")


def test_threshold_must_fit_the_root_keys(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="between 1 and the number of root keys"):
        ReleaseRepository.create(tmp_path / "r", tmp_path / "k", root_keys=1, root_threshold=2)
    assert not (tmp_path / "r").exists()


def test_two_versions_share_chunks_and_verify_with_ngclient(
    repo: ReleaseRepository, tiny_model_dir: Path, variant_dir: Path, tmp_path: Path
) -> None:
    first = repo.publish(tiny_model_dir, "tiny", "1.0.0", quantization={"block_size": 128})
    after_first = chunk_files(repo)
    second = repo.publish(variant_dir, "tiny", "1.1.0")
    new_chunks = chunk_files(repo) - after_first

    assert [f.path for f in first.files] == sorted(p.name for p in tiny_model_dir.iterdir())
    assert first.quantization == {"block_size": 128}
    assert set(first.unique_chunks()) == after_first
    changed = set(second.unique_chunks()) - set(first.unique_chunks())
    assert new_chunks == changed
    assert len(changed) == 1  # only the tokenizer config differs
    moved = sum(second.unique_chunks()[h] for h in changed)
    assert moved < 0.02 * second.total_bytes

    index = repo.index()
    assert index.versions("tiny") == ["1.0.0", "1.1.0"]
    assert index.models["tiny"]["1.1.0"] == "tiny/1.1.0/manifest.json"
    assert repo.manifest("tiny", "1.0.0") == first

    updater = fresh_updater(repo, tmp_path / "client")
    updater.refresh()
    info = updater.get_targetinfo("tiny/1.1.0/manifest.json")
    assert info is not None
    assert info.custom == {"model": "tiny", "version": "1.1.0"}
    manifest_path = updater.download_target(info)
    assert ReleaseManifest.model_validate_json(Path(manifest_path).read_bytes()) == second
    index_info = updater.get_targetinfo(INDEX_TARGET)
    assert index_info is not None
    index_bytes = Path(updater.download_target(index_info)).read_bytes()
    assert ReleaseIndex.model_validate_json(index_bytes) == index

    rebuilt = tmp_path / "rebuilt"
    rebuild(repo, second, rebuilt)
    for entry in second.files:
        assert (rebuilt / entry.path).read_bytes() == (variant_dir / entry.path).read_bytes()


def test_revoke_unlists_the_release_and_retires_its_version(
    repo: ReleaseRepository, tiny_model_dir: Path, variant_dir: Path, tmp_path: Path
) -> None:
    repo.publish(tiny_model_dir, "tiny", "1.0.0")
    repo.publish(variant_dir, "tiny", "1.1.0")
    repo.revoke("tiny", "1.1.0")

    assert repo.index().versions("tiny") == ["1.0.0"]
    with pytest.raises(ReleaseNotFound, match=r"no release tiny 1\.1\.0"):
        repo.manifest("tiny", "1.1.0")
    assert not list((repo.root / "targets" / "tiny" / "1.1.0").iterdir())
    updater = fresh_updater(repo, tmp_path / "client")
    updater.refresh()
    assert updater.get_targetinfo("tiny/1.1.0/manifest.json") is None
    assert updater.get_targetinfo("tiny/1.0.0/manifest.json") is not None

    with pytest.raises(ReleaseNotFound, match=r"listed versions of tiny: 1\.0\.0"):
        repo.revoke("tiny", "1.1.0")
    repo.revoke("tiny", "1.0.0")
    assert repo.index() == ReleaseIndex()
    assert repo.publish(variant_dir, "tiny", "1.2.0").version == "1.2.0"


def test_refresh_re_signs_only_what_is_due(repo: ReleaseRepository, tmp_path: Path) -> None:
    start = datetime.now(UTC)
    expiry = Expiry()
    assert repo.refresh(now=start) == []
    assert repo.refresh(now=start + timedelta(hours=13)) == ["timestamp"]
    timestamp = json.loads((repo.root / "metadata" / "timestamp.json").read_text())
    assert timestamp["signed"]["version"] == 2
    assert repo.refresh(now=start + timedelta(hours=14)) == []
    assert repo.refresh(now=start + timedelta(days=expiry.snapshot_days / 2 + 1)) == [
        "snapshot",
        "timestamp",
    ]
    assert repo.refresh(now=start + timedelta(days=expiry.targets_days / 2 + 1)) == [
        "targets",
        "snapshot",
        "timestamp",
    ]
    assert repo.refresh(force=True) == ["snapshot", "timestamp"]
    fresh_updater(repo, tmp_path / "client").refresh()


@pytest.mark.parametrize("role", ["targets", "snapshot", "timestamp"])
def test_rotated_key_validates_from_the_first_root(
    repo: ReleaseRepository, tiny_model_dir: Path, tmp_path: Path, role: str
) -> None:
    repo.publish(tiny_model_dir, "tiny", "1.0.0")
    old_keyid = repo.signer(role).public_key.keyid
    repo.rotate_online_key(role)
    new_keyid = repo.signer(role).public_key.keyid
    assert new_keyid != old_keyid
    assert (repo.root / "metadata" / "2.root.json").is_file()
    assert (repo.keys_dir / "retired" / f"{role}-{old_keyid}.pem").is_file()
    assert not (repo.keys_dir / f"{role}-{old_keyid}.pem").exists()

    updater = fresh_updater(repo, tmp_path / "client")
    updater.refresh()
    assert updater.get_targetinfo("tiny/1.0.0/manifest.json") is not None
    root = Metadata[Root].from_file(str(tmp_path / "client" / "metadata" / "root.json")).signed
    assert root.version == 2
    assert root.roles[role].keyids == [new_keyid]
    repo.rotate_online_key(role)
    fresh_updater(repo, tmp_path / "client2").refresh()


def test_metadata_signed_by_a_retired_key_is_refused(
    repo: ReleaseRepository, tmp_path: Path
) -> None:
    old_signer = repo.signer("timestamp")
    repo.rotate_online_key("timestamp")
    path = repo.root / "metadata" / "timestamp.json"
    forged = Metadata.from_bytes(path.read_bytes())
    forged.signed.version += 1
    forged.sign(old_signer)
    path.write_bytes(forged.to_bytes())
    with pytest.raises(UnsignedMetadataError):
        fresh_updater(repo, tmp_path / "client").refresh()
    # The hub notices that the current key does not sign it, and repairs it.
    assert repo.refresh() == ["timestamp"]
    fresh_updater(repo, tmp_path / "client2").refresh()

"""The TUF attack classes: each refused with a clear error and no change to the store.

The attacker sits between the device and an honest repository (the hub's own code) and
changes bytes in transit, as a compromised mirror or a hostile network would.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.signer import CryptoSigner, Signer
from tuf.api.metadata import Metadata

from edge_agent.runtime import LoadedModel, RuntimeSettings
from edge_agent.updates.errors import Refused, RepositoryError
from edge_agent.updates.fetchers import FolderFetcher
from hub.registry.repository import ReleaseRepository
from tests.updates.conftest import Fleet


class Attacker(FolderFetcher):
    """Serves the honest repository, except for the URLs it rewrites."""

    def __init__(self) -> None:
        super().__init__()
        self.rewrites: list[tuple[str, Callable[[bytes], bytes]]] = []
        self.injected: dict[str, bytes] = {}

    def rewrite(self, suffix: str, change: Callable[[bytes], bytes]) -> None:
        self.rewrites.append((suffix, change))

    def inject(self, suffix: str, data: bytes) -> None:
        """Serve `data` for a URL the honest repository does not have."""
        self.injected[suffix] = data

    def _fetch(self, url: str) -> Iterator[bytes]:
        for suffix, data in self.injected.items():
            if url.endswith(suffix):
                return iter([data])
        for suffix, change in self.rewrites:
            if url.endswith(suffix):
                return iter([change(b"".join(super()._fetch(url)))])
        return super()._fetch(url)


def signed(
    data: bytes, change: Callable[[Any], None], *signers: Signer, bump: bool = True
) -> bytes:
    md = Metadata.from_bytes(data)
    change(md.signed)
    if bump:
        md.signed.version += 1
    md.signatures.clear()
    for signer in signers:
        md.sign(signer, append=True)
    return md.to_bytes()


def latest(repo: ReleaseRepository, role: str) -> str:
    versions = [int(p.name.split(".")[0]) for p in (repo.root / "metadata").glob(f"*.{role}.json")]
    return f"{max(versions)}.{role}.json"


@pytest.fixture
def device_at_1(fleet: Fleet) -> Fleet:
    """Device runs 1.0.0; the hub has just published 1.1.0."""
    fleet.update()
    fleet.repo.publish(fleet.variant("v2", top_k=7), "tiny", "1.1.0")
    return fleet


def refused(
    fleet: Fleet, attacker: Attacker, match: str, kind: type[Exception] = RepositoryError
) -> None:
    before = fleet.snapshot()
    with pytest.raises(kind, match=match):
        fleet.update(fetcher=attacker)
    assert fleet.snapshot() == before
    active = fleet.store.active("tiny")
    assert active is not None and active.version == "1.0.0"
    LoadedModel.load("t", active.path, RuntimeSettings())  # still runs, offline


# --- arbitrary software ------------------------------------------------------------------


def test_metadata_signed_by_an_unknown_key(device_at_1: Fleet) -> None:
    attacker = Attacker()
    rogue = CryptoSigner.generate_ed25519()
    attacker.rewrite("timestamp.json", lambda b: signed(b, lambda s: None, rogue))
    refused(device_at_1, attacker, "signature|Unsigned|threshold")


def test_metadata_changed_after_signing(device_at_1: Fleet) -> None:
    attacker = Attacker()

    def alter(data: bytes) -> bytes:
        doc = json.loads(data)
        doc["signed"]["expires"] = "2099-01-01T00:00:00Z"
        return json.dumps(doc).encode()

    attacker.rewrite("timestamp.json", alter)
    refused(device_at_1, attacker, "signature|Unsigned|threshold")


def test_tampered_chunk(device_at_1: Fleet) -> None:
    new = device_at_1.store.missing_chunks(device_at_1.repo.manifest("tiny", "1.1.0"))
    (sha,) = new
    attacker = Attacker()
    attacker.rewrite(sha, lambda b: b[:-1] + bytes([b[-1] ^ 1]))
    refused(device_at_1, attacker, "does not match the signed manifest")


def test_tampered_manifest(device_at_1: Fleet) -> None:
    attacker = Attacker()
    attacker.rewrite("manifest.json", lambda b: b.replace(b'"1.1.0"', b'"1.1.0" '))
    refused(device_at_1, attacker, "LengthOrHashMismatch|hash|length")


# --- rollback and freeze -----------------------------------------------------------------


def test_replayed_old_timestamp(fleet: Fleet) -> None:
    old = (fleet.repo.root / "metadata" / "timestamp.json").read_bytes()
    fleet.update()
    fleet.repo.publish(fleet.variant("v2", top_k=7), "tiny", "1.1.0")
    fleet.update()  # the device has seen the newer timestamp
    fleet.repo.publish(fleet.variant("v3", top_k=9), "tiny", "1.2.0")
    attacker = Attacker()
    attacker.rewrite("timestamp.json", lambda _b: old)
    before = fleet.snapshot()
    with pytest.raises(RepositoryError, match=r"BadVersionNumber|version"):
        fleet.update(fetcher=attacker)
    assert fleet.snapshot() == before


def test_timestamp_pointing_at_an_older_snapshot(device_at_1: Fleet) -> None:
    repo = device_at_1.repo
    attacker = Attacker()

    def older_snapshot(timestamp: Any) -> None:
        # Older than the snapshot the device already trusts (one publish ago).
        timestamp.snapshot_meta.version -= 2

    attacker.rewrite(
        "timestamp.json", lambda b: signed(b, older_snapshot, repo.signer("timestamp"))
    )
    refused(device_at_1, attacker, "version|Version")


def test_expired_timestamp_stops_updates_not_the_model(device_at_1: Fleet) -> None:
    attacker = Attacker()
    past = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)

    def expire(timestamp: Any) -> None:
        timestamp.expires = past

    attacker.rewrite(
        "timestamp.json", lambda b: signed(b, expire, device_at_1.repo.signer("timestamp"))
    )
    refused(device_at_1, attacker, "Expired")


def test_mix_and_match_of_targets_versions(device_at_1: Fleet) -> None:
    repo = device_at_1.repo
    current = latest(repo, "targets")
    older = (repo.root / "metadata" / f"{int(current.split('.')[0]) - 1}.targets.json").read_bytes()
    attacker = Attacker()
    attacker.rewrite(current, lambda _b: older)
    refused(device_at_1, attacker, "version|Version|LengthOrHashMismatch")


# --- endless data ------------------------------------------------------------------------


def test_oversized_chunk(device_at_1: Fleet) -> None:
    (sha,) = device_at_1.store.missing_chunks(device_at_1.repo.manifest("tiny", "1.1.0"))
    attacker = Attacker()
    attacker.rewrite(sha, lambda b: b + b"\0" * (1 << 20))
    refused(device_at_1, attacker, "more than")


def test_endless_timestamp(device_at_1: Fleet) -> None:
    attacker = Attacker()
    attacker.rewrite("timestamp.json", lambda b: b + b" " * (1 << 20))
    refused(device_at_1, attacker, "too much data|length|Length")


# --- keys --------------------------------------------------------------------------------


def test_fast_forward_recovered_by_rotating_the_timestamp_key(device_at_1: Fleet) -> None:
    """A stolen timestamp key pushes the device to a huge version; rotation recovers it."""
    repo = device_at_1.repo
    attacker = Attacker()

    def huge(timestamp: Any) -> None:
        timestamp.version = 10**9 - 1

    attacker.rewrite("timestamp.json", lambda b: signed(b, huge, repo.signer("timestamp")))
    with device_at_1.source(attacker) as source:
        source.refresh()  # validly signed: the device now trusts version 10**9
    repo.publish(device_at_1.variant("v3", top_k=9), "tiny", "1.2.0")
    with pytest.raises(RepositoryError, match=r"BadVersionNumber|version"):
        device_at_1.update()  # the honest timestamp now looks like a rollback
    repo.rotate_online_key("timestamp")
    assert device_at_1.update().version == "1.2.0"


def test_root_signed_below_threshold(tiny_model_dir: Path, tmp_path: Path) -> None:
    from edge_agent.updates.source import pin_root

    repo = ReleaseRepository.create(
        tmp_path / "repo", tmp_path / "keys", root_keys=3, root_threshold=2
    )
    repo.publish(tiny_model_dir, "tiny", "1.0.0")
    device = tmp_path / "device"
    pin_root(device / "trust", repo.trusted_root_path())
    fleet = Fleet(repo, device, tiny_model_dir, tmp_path)
    fleet.update()
    one_root_key = repo.signer("root")
    rogue = CryptoSigner.generate_ed25519()

    def hijack(root: Any) -> None:
        for keyid in list(root.roles["targets"].keyids):
            root.revoke_key(keyid, "targets")
        root.add_key(rogue.public_key, "targets")

    first = (repo.root / "metadata" / "1.root.json").read_bytes()
    forged = signed(first, hijack, one_root_key)
    attacker = Attacker()
    attacker.inject("/2.root.json", forged)
    before = fleet.snapshot()
    with pytest.raises(RepositoryError, match=r"threshold|Unsigned|signature"):
        fleet.update(fetcher=attacker)
    assert fleet.snapshot() == before


# --- revocation --------------------------------------------------------------------------


def test_revoked_release(device_at_1: Fleet) -> None:
    device_at_1.repo.revoke("tiny", "1.1.0")
    before = device_at_1.snapshot()
    with pytest.raises(Refused, match=r"not listed in the signed targets"):
        device_at_1.update("1.1.0")
    assert device_at_1.update().changed is False  # the newest listed is the active 1.0.0
    assert device_at_1.snapshot() == before

"""The TUF attack classes: each refused with a clear error and no change to the store.

The attacker sits between the device and an honest repository (the hub's own code) and
changes bytes in transit, as a compromised mirror or a hostile network would.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.signer import CryptoSigner, Signer
from tuf.api.metadata import Metadata

from edge_agent.runtime import LoadedModel, RuntimeSettings
from edge_agent.updates.errors import Refused, RepositoryError
from edge_agent.updates.fetchers import READ_BLOCK_BYTES, FolderFetcher
from edge_agent.updates.source import SourceLimits
from hub.registry.repository import ReleaseRepository
from tests.updates.conftest import Fleet


class Attacker(FolderFetcher):
    """Serves the honest repository, except for the URLs it rewrites."""

    def __init__(self) -> None:
        super().__init__()
        self.rewrites: list[tuple[str, Callable[[bytes], bytes]]] = []
        self.injected: dict[str, bytes] = {}
        self.endless_suffixes: list[str] = []
        self.pulled = 0

    def rewrite(self, suffix: str, change: Callable[[bytes], bytes]) -> None:
        self.rewrites.append((suffix, change))

    def inject(self, suffix: str, data: bytes) -> None:
        """Serve `data` for a URL the honest repository does not have."""
        self.injected[suffix] = data

    def endless(self, suffix: str) -> None:
        """Serve the honest bytes, then spaces that never end; `pulled` counts what the
        device read of them."""
        self.endless_suffixes.append(suffix)

    def _endless(self, url: str) -> Iterator[bytes]:
        for block in super()._fetch(url):
            self.pulled += len(block)
            yield block
        while True:
            self.pulled += READ_BLOCK_BYTES
            yield b" " * READ_BLOCK_BYTES

    def _fetch(self, url: str) -> Iterator[bytes]:
        if any(url.endswith(suffix) for suffix in self.endless_suffixes):
            return self._endless(url)
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


def exactly(message: str) -> str:
    """A `match=` pattern for this message and nothing else."""
    return f"^{re.escape(message)}$"


def version_of(data: bytes) -> int:
    version: int = json.loads(data)["signed"]["version"]
    return version


def signed_target_length(repo: ReleaseRepository, suffix: str) -> int:
    """The length the current signed targets give for the newest target named `suffix`."""
    targets = json.loads((repo.root / "metadata" / latest(repo, "targets")).read_bytes())
    lengths = [info["length"] for path, info in targets["signed"]["targets"].items()]
    paths = list(targets["signed"]["targets"])
    matching = [
        length for path, length in zip(paths, lengths, strict=True) if path.endswith(suffix)
    ]
    return int(matching[-1])


def latest(repo: ReleaseRepository, role: str) -> str:
    versions = [int(p.name.split(".")[0]) for p in (repo.root / "metadata").glob(f"*.{role}.json")]
    return f"{max(versions)}.{role}.json"


@pytest.fixture
def device_at_1(fleet: Fleet) -> Fleet:
    """Device runs 1.0.0; the hub has just published 1.1.0."""
    fleet.update()
    fleet.repo.publish(fleet.variant("v2", top_k=7), "tiny", "1.1.0")
    return fleet


def unchanged_but_for_honest_metadata(
    fleet: Fleet, before: dict[str, object], trusted_before: dict[str, str]
) -> None:
    """Nothing changed on the device (every file's content compared), except that trust/
    may have taken the honest repository's current metadata, verified before the attack was
    met. The attacker's bytes land nowhere, trust/ included."""
    assert fleet.snapshot() == before
    trusted = fleet.trust()
    honest = fleet.honest_metadata()
    changed = {name for name, digest in trusted.items() if trusted_before.get(name) != digest}
    assert {name: trusted[name] for name in changed} == {name: honest.get(name) for name in changed}
    assert trusted_before.keys() <= trusted.keys()


def refused(
    fleet: Fleet, attacker: Attacker, match: str, kind: type[Exception] = RepositoryError
) -> None:
    before, trusted = fleet.snapshot(), fleet.trust()
    with pytest.raises(kind, match=match):
        fleet.update(fetcher=attacker)
    unchanged_but_for_honest_metadata(fleet, before, trusted)
    active = fleet.store.active("tiny")
    assert active is not None and active.version == "1.0.0"
    LoadedModel.load("t", active.path, RuntimeSettings())  # still runs, offline


# --- arbitrary software ------------------------------------------------------------------


UNSIGNED_TIMESTAMP = exactly(
    "refreshing metadata: UnsignedMetadataError: timestamp was signed by 0/1 keys"
)


def test_metadata_signed_by_an_unknown_key(device_at_1: Fleet) -> None:
    attacker = Attacker()
    rogue = CryptoSigner.generate_ed25519()
    attacker.rewrite("timestamp.json", lambda b: signed(b, lambda s: None, rogue))
    refused(device_at_1, attacker, UNSIGNED_TIMESTAMP)


def test_metadata_changed_after_signing(device_at_1: Fleet) -> None:
    attacker = Attacker()

    def alter(data: bytes) -> bytes:
        doc = json.loads(data)
        doc["signed"]["expires"] = "2099-01-01T00:00:00Z"
        return json.dumps(doc).encode()

    attacker.rewrite("timestamp.json", alter)
    refused(device_at_1, attacker, UNSIGNED_TIMESTAMP)


def test_tampered_chunk(device_at_1: Fleet) -> None:
    new = device_at_1.store.missing_chunks(device_at_1.repo.manifest("tiny", "1.1.0"))
    (sha,) = new
    attacker = Attacker()
    attacker.rewrite(sha, lambda b: b[:-1] + bytes([b[-1] ^ 1]))
    refused(
        device_at_1,
        attacker,
        rf"^a chunk of tiny 1\.1\.0 does not match the signed manifest \(chunk {sha[:12]}\.\.\. "
        r"arrived with hash [0-9a-f]{12}\.\.\.\); nothing was installed$",
    )


def test_tampered_manifest_of_another_length(device_at_1: Fleet) -> None:
    honest = (device_at_1.repo.root / "targets" / "tiny" / "1.1.0").glob("*.manifest.json")
    (signed_length,) = {path.stat().st_size for path in honest}
    attacker = Attacker()
    attacker.rewrite("manifest.json", lambda b: b.replace(b'"1.1.0"', b'"1.1.0" '))
    message = (
        "fetching release tiny 1.1.0: the repository sent too much data (Downloaded "
        f"{signed_length + 1} bytes exceeding the maximum allowed length of {signed_length})"
    )
    refused(device_at_1, attacker, exactly(message))


def test_tampered_manifest_of_the_same_length(device_at_1: Fleet) -> None:
    attacker = Attacker()
    attacker.rewrite("manifest.json", lambda b: b.replace(b'"1.1.0"', b'"1.1.1"', 1))
    refused(
        device_at_1,
        attacker,
        r"^fetching release tiny 1\.1\.0: LengthOrHashMismatchError: Observed hash "
        r"[0-9a-f]{64} does not match expected hash [0-9a-f]{64}$",
    )


# --- rollback and freeze -----------------------------------------------------------------


def test_replayed_old_timestamp(fleet: Fleet) -> None:
    old = (fleet.repo.root / "metadata" / "timestamp.json").read_bytes()
    fleet.update()
    fleet.repo.publish(fleet.variant("v2", top_k=7), "tiny", "1.1.0")
    fleet.update()  # the device has seen the newer timestamp
    seen = version_of((fleet.device / "trust" / "timestamp.json").read_bytes())
    fleet.repo.publish(fleet.variant("v3", top_k=9), "tiny", "1.2.0")
    attacker = Attacker()
    attacker.rewrite("timestamp.json", lambda _b: old)
    before, trusted = fleet.snapshot(), fleet.trust()
    message = (
        "refreshing metadata: BadVersionNumberError: "
        f"New timestamp version {version_of(old)} must be >= {seen}"
    )
    with pytest.raises(RepositoryError, match=exactly(message)):
        fleet.update(fetcher=attacker)
    unchanged_but_for_honest_metadata(fleet, before, trusted)


def test_timestamp_pointing_at_an_older_snapshot(device_at_1: Fleet) -> None:
    repo = device_at_1.repo
    attacker = Attacker()

    def older_snapshot(timestamp: Any) -> None:
        # Older than the snapshot the device already trusts (one publish ago).
        timestamp.snapshot_meta.version -= 2

    attacker.rewrite(
        "timestamp.json", lambda b: signed(b, older_snapshot, repo.signer("timestamp"))
    )
    trusted = version_of((device_at_1.device / "trust" / "snapshot.json").read_bytes())
    message = (
        "refreshing metadata: BadVersionNumberError: "
        f"New snapshot version must be >= {trusted}, got version {trusted - 1}"
    )
    refused(device_at_1, attacker, exactly(message))


def test_expired_timestamp_stops_updates_not_the_model(device_at_1: Fleet) -> None:
    attacker = Attacker()
    past = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)

    def expire(timestamp: Any) -> None:
        timestamp.expires = past

    attacker.rewrite(
        "timestamp.json", lambda b: signed(b, expire, device_at_1.repo.signer("timestamp"))
    )
    message = "refreshing metadata: ExpiredMetadataError: timestamp.json is expired"
    refused(device_at_1, attacker, exactly(message))


def test_mix_and_match_of_targets_versions(device_at_1: Fleet) -> None:
    repo = device_at_1.repo
    current = latest(repo, "targets")
    older = (repo.root / "metadata" / f"{int(current.split('.')[0]) - 1}.targets.json").read_bytes()
    attacker = Attacker()
    attacker.rewrite(current, lambda _b: older)
    # The snapshot pins each targets version's length (and version): the older file is
    # refused by length before it is parsed.
    honest = (repo.root / "metadata" / current).stat().st_size
    message = (
        "refreshing metadata: LengthOrHashMismatchError: "
        f"Observed length {len(older)} does not match expected length {honest}"
    )
    refused(device_at_1, attacker, exactly(message))


# --- endless data ------------------------------------------------------------------------


def test_oversized_chunk(device_at_1: Fleet) -> None:
    (sha,) = device_at_1.store.missing_chunks(device_at_1.repo.manifest("tiny", "1.1.0"))
    attacker = Attacker()
    attacker.rewrite(sha, lambda b: b + b"\0" * (1 << 20))
    size = device_at_1.repo.manifest("tiny", "1.1.0").unique_chunks()[sha]
    refused(
        device_at_1,
        attacker,
        rf"^fetching chunk {sha[:12]}\.\.\.: the repository sent too much data "
        rf"\(file://\S+/{sha} sent more than {size} bytes\)$",
    )


def test_endless_timestamp(device_at_1: Fleet) -> None:
    attacker = Attacker()
    attacker.rewrite("timestamp.json", lambda b: b + b" " * (1 << 20))
    refused(
        device_at_1,
        attacker,
        r"^refreshing metadata: the repository sent too much data \(Downloaded \d+ bytes "
        rf"exceeding the maximum allowed length of {SourceLimits().max_timestamp_bytes}\)$",
    )


@pytest.mark.parametrize(
    ("target", "what"),
    [("manifest.json", "release tiny 1.1.0"), ("index.json", "the release index")],
)
def test_endless_index_or_manifest(device_at_1: Fleet, target: str, what: str) -> None:
    # The signed targets give each file's length: the download stops within a block of it.
    attacker = Attacker()
    attacker.endless(target)
    signed_length = signed_target_length(device_at_1.repo, target)
    # The honest file fits in one block; the first block of spaces goes past the length.
    pulled = signed_length + READ_BLOCK_BYTES
    message = (
        f"fetching {what}: the repository sent too much data (Downloaded {pulled} bytes "
        f"exceeding the maximum allowed length of {signed_length})"
    )
    refused(device_at_1, attacker, exactly(message))
    assert attacker.pulled == pulled  # not a byte more was read


def test_oversized_manifest_signed_with_stolen_online_keys(device_at_1: Fleet) -> None:
    """The targets, snapshot and timestamp keys are stolen (the hub is compromised): the
    attacker lists a 1 GiB manifest under valid signatures and serves endless bytes for it.
    The agent's own cap refuses it before downloading a byte of it."""
    repo = device_at_1.repo
    huge = 1 << 30
    attacker = Attacker()
    attacker.endless("manifest.json")
    forged: dict[str, bytes] = {}

    def list_huge_manifest(targets: Any) -> None:
        for path, info in targets.targets.items():
            if path.endswith("1.1.0/manifest.json"):
                info.length = huge

    def point_at(role: str) -> Callable[[Any], None]:
        def change(meta_of: Any) -> None:
            meta = meta_of.meta[f"{role}.json"] if role == "targets" else meta_of.snapshot_meta
            meta.length = len(forged[role])
            meta.hashes = {"sha256": hashlib.sha256(forged[role]).hexdigest()}

        return change

    def forge(role: str, change: Callable[[Any], None], name: str) -> None:
        data = (repo.root / "metadata" / name).read_bytes()
        forged[role] = signed(data, change, repo.signer(role), bump=False)
        attacker.inject(f"/{name}", forged[role])

    forge("targets", list_huge_manifest, latest(repo, "targets"))
    forge("snapshot", point_at("targets"), latest(repo, "snapshot"))
    forge("timestamp", point_at("snapshot"), "timestamp.json")
    message = (
        f"release tiny 1.1.0 is listed at {huge} bytes, more than "
        f"the {SourceLimits().max_target_bytes} this agent accepts; nothing was downloaded. "
        "Ask the fleet's operator to check the repository's signing keys"
    )
    before, trusted = device_at_1.snapshot(), device_at_1.trust()
    with pytest.raises(RepositoryError, match=exactly(message)):
        device_at_1.update(fetcher=attacker)
    assert attacker.pulled == 0
    assert device_at_1.snapshot() == before
    assert trusted.keys() <= device_at_1.trust().keys()


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
    honest = version_of((repo.root / "metadata" / "timestamp.json").read_bytes())
    message = (
        "refreshing metadata: BadVersionNumberError: "
        f"New timestamp version {honest} must be >= {10**9}"
    )
    with pytest.raises(RepositoryError, match=exactly(message)):
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
    before, trusted = fleet.snapshot(), fleet.trust()
    message = "refreshing metadata: UnsignedMetadataError: root was signed by 1/2 keys"
    with pytest.raises(RepositoryError, match=exactly(message)):
        fleet.update(fetcher=attacker)
    unchanged_but_for_honest_metadata(fleet, before, trusted)


# --- revocation --------------------------------------------------------------------------


def test_revoked_release(device_at_1: Fleet) -> None:
    device_at_1.repo.revoke("tiny", "1.1.0")
    before, trusted = device_at_1.snapshot(), device_at_1.trust()
    message = "release tiny 1.1.0 is not listed in the signed targets (revoked or unknown)"
    with pytest.raises(Refused, match=exactly(message)):
        device_at_1.update("1.1.0")
    assert device_at_1.update().changed is False  # the newest listed is the active 1.0.0
    unchanged_but_for_honest_metadata(device_at_1, before, trusted)

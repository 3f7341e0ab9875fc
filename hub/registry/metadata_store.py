"""TUF metadata on disk, edited through python-tuf's repository abstraction.

`tuf.repository.Repository` does the snapshot and timestamp bookkeeping (do_snapshot,
do_timestamp); this class supplies what it leaves to implementations: where metadata
lives, how a new version is expired, signed and written.

Files (consistent snapshots, so a client never mixes two repository states):

    metadata/<N>.root.json      every root version: clients walk them one by one
    metadata/<N>.targets.json
    metadata/<N>.snapshot.json
    metadata/timestamp.json     the one file that changes in place

What is current is decided by the chain timestamp -> snapshot -> targets, not by the
newest file: a crash after writing N.targets.json but before the snapshot leaves the
previous state current, and the next edit overwrites the orphan.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from securesystemslib.signer import Signer
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, Targets, Timestamp
from tuf.api.serialization import DeserializationError
from tuf.api.serialization.json import JSONSerializer
from tuf.repository import Repository

from edge_agent.atomic import write_atomic
from hub.registry.errors import RepositoryStateError, SigningKeyError
from hub.registry.keys import ROOT_KEYS_DIR, KeyStore

ROOT_FILE = re.compile(r"^([1-9][0-9]*)\.root\.json$")
HASH_ALGORITHMS = ["sha256"]
_SIGNED_TYPES = {"root": Root, "targets": Targets, "snapshot": Snapshot, "timestamp": Timestamp}


@dataclass(frozen=True)
class Expiry:
    """How long each role's metadata stays valid after it is signed."""

    root_days: int = 365
    targets_days: int = 90
    snapshot_days: int = 7
    timestamp_days: int = 1

    def __post_init__(self) -> None:
        for role in _SIGNED_TYPES:
            if self.days(role) < 1:
                raise ValueError(f"{role}_days must be at least 1")

    def days(self, role: str) -> int:
        value: int = getattr(self, f"{role}_days")
        return value


def metadata_filename(role: str, version: int) -> str:
    return "timestamp.json" if role == "timestamp" else f"{version}.{role}.json"


class MetadataStore(Repository):
    """Current metadata of each role, and the signing of new versions.

    Not thread-safe and not process-safe on its own: the caller holds the repository
    lock around load() and every edit.
    """

    def __init__(
        self,
        metadata_dir: Path,
        keys: KeyStore,
        expiry: Expiry,
        clock: Callable[[], datetime],
    ) -> None:
        self.metadata_dir = metadata_dir
        self.keys = keys
        self.expiry = expiry
        self.clock = clock
        self._current: dict[str, Metadata[Any]] = {}
        self._infos: dict[str, MetaFile] = {}

    # --- loading -------------------------------------------------------------------------

    def load(self) -> None:
        """Read the current state from disk (another process may have changed it)."""
        self._current.clear()
        self._infos.clear()
        versions = [
            int(match.group(1))
            for path in self.metadata_dir.glob("*.root.json")
            if (match := ROOT_FILE.match(path.name))
        ]
        if not versions:
            raise RepositoryStateError(
                f"{self.metadata_dir}: no root metadata; create the repository first "
                "(`edge-hub repo init`)"
            )
        self._read("root", max(versions))
        timestamp = self._read("timestamp", 0).signed
        assert isinstance(timestamp, Timestamp)
        snapshot = self._read("snapshot", timestamp.snapshot_meta.version).signed
        assert isinstance(snapshot, Snapshot)
        targets_meta = snapshot.meta.get("targets.json")
        if targets_meta is None:
            raise RepositoryStateError(
                f"{self.metadata_dir}: snapshot v{snapshot.version} lists no targets.json; "
                "the repository is damaged: restore the metadata folder from backup"
            )
        self._read("targets", targets_meta.version)

    def _read(self, role: str, version: int) -> Metadata[Any]:
        path = self.metadata_dir / metadata_filename(role, version)
        try:
            data = path.read_bytes()
            md: Metadata[Any] = Metadata.from_bytes(data)
        except FileNotFoundError:
            raise RepositoryStateError(
                f"{path}: missing; the repository is damaged: restore the metadata folder "
                "from backup"
            ) from None
        except (OSError, DeserializationError) as exc:
            raise RepositoryStateError(f"{path}: unreadable {role} metadata: {exc}") from None
        if not isinstance(md.signed, _SIGNED_TYPES[role]):
            raise RepositoryStateError(f"{path}: holds {md.signed.type} metadata, not {role}")
        self._remember(role, md, data)
        return md

    def _remember(self, role: str, md: Metadata[Any], data: bytes) -> None:
        self._current[role] = md
        if role in ("targets", "snapshot"):
            self._infos[role] = MetaFile.from_data(md.signed.version, data, HASH_ALGORITHMS)

    def current(self, role: str) -> Metadata[Any]:
        """The current metadata of `role`, as loaded or last written."""
        return self._current[role]

    # --- tuf.repository.Repository -------------------------------------------------------

    def open(self, role: str) -> Metadata[Any]:
        if role in self._current:
            return copy.deepcopy(self._current[role])
        md: Metadata[Any] = Metadata(_SIGNED_TYPES[role]())
        md.signed.version = 0  # close() makes the first version 1
        return md

    def close(self, role: str, md: Metadata[Any]) -> None:
        md.signed.version += 1
        md.signed.expires = self.clock() + timedelta(days=self.expiry.days(role))
        md.signatures.clear()
        if role == "root":
            self._sign_root(md)
        else:
            self._sign_online(role, md)
        data = md.to_bytes(JSONSerializer(compact=False))
        write_atomic(self.metadata_dir / metadata_filename(role, md.signed.version), data)
        self._remember(role, md, data)

    @property
    def targets_infos(self) -> dict[str, MetaFile]:
        return {"targets.json": self._infos["targets"]}

    @property
    def snapshot_info(self) -> MetaFile:
        return self._infos["snapshot"]

    def adopt_root(self, data: bytes) -> int:
        """Take the next root version signed elsewhere (the offline key ceremony): it must
        satisfy the current root's threshold and its own, as a client will check."""
        try:
            md: Metadata[Root] = Metadata[Root].from_bytes(data)
        except (DeserializationError, ValueError) as exc:
            raise RepositoryStateError(f"not TUF root metadata: {exc}") from None
        previous = self._current.get("root")
        previous_root = previous.signed if previous is not None else None
        assert previous_root is None or isinstance(previous_root, Root)
        expected = previous_root.version + 1 if previous_root is not None else 1
        if md.signed.version != expected:
            raise RepositoryStateError(
                f"the root given is version {md.signed.version}; this repository needs "
                f"version {expected} next"
            )
        result = md.signed.get_root_verification_result(
            previous_root, md.signed_bytes, md.signatures
        )
        if not result.verified:
            raise SigningKeyError(
                "the root given is not signed by the threshold of the current root's keys "
                "and of its own: sign it in the key ceremony (`edge-provision rotate-root`)"
            )
        write_atomic(self.metadata_dir / metadata_filename("root", md.signed.version), data)
        self._remember("root", md, data)
        return md.signed.version

    # --- signing -------------------------------------------------------------------------

    def signers(self, role: str, root: Root | None = None) -> list[Signer]:
        """Every key of `role` that is at hand, by the given or the current root."""
        if root is None:
            root = self.root()
        found: list[Signer] = []
        for keyid in root.roles[role].keyids:
            key = root.get_key(keyid)
            if role == "root" and not self.keys.available(role, key):
                continue  # root keys may be offline; the threshold check says what is missing
            found.append(self.keys.load(role, key))
        return found

    def verify(self, role: str, md: Metadata[Any]) -> bool:
        """Does the current root's threshold of `role` keys sign `md`?"""
        try:
            self.root().verify_delegate(role, md.signed_bytes, md.signatures)
        except UnsignedMetadataError:
            return False
        return True

    def _sign_online(self, role: str, md: Metadata[Any]) -> None:
        for signer in self.signers(role):
            md.sign(signer, append=True)
        if not self.verify(role, md):
            raise SigningKeyError(
                f"{role} metadata needs {self.root().roles[role].threshold} of its keys in "
                f"{self.keys.keys_dir}; fewer are there"
            )

    def _sign_root(self, md: Metadata[Any]) -> None:
        # A new root must satisfy the threshold of the previous root's keys and of its own,
        # so a client that trusts the old root can walk to the new one.
        new_root = md.signed
        assert isinstance(new_root, Root)
        previous = self._current.get("root")
        previous_root = previous.signed if previous is not None else None
        assert previous_root is None or isinstance(previous_root, Root)
        signers = {s.public_key.keyid: s for s in self.signers("root", new_root)}
        if previous_root is not None:
            signers.update({s.public_key.keyid: s for s in self.signers("root", previous_root)})
        for signer in signers.values():
            md.sign(signer, append=True)
        result = new_root.get_root_verification_result(
            previous_root, md.signed_bytes, md.signatures
        )
        if not result.verified:
            needed = new_root.roles["root"].threshold
            raise SigningKeyError(
                f"a new root version needs {needed} root keys of the old and the new root; "
                f"only {len(signers)} are in {self.keys.keys_dir / ROOT_KEYS_DIR}: bring the "
                "offline root keys back for this operation"
            )

"""The release repository: signed model releases as TUF targets, chunks beside them.

    <root>/metadata/            TUF metadata (see metadata_store)
    <root>/targets/<sha256>.index.json                      the ReleaseIndex target
    <root>/targets/<model>/<version>/<sha256>.manifest.json one ReleaseManifest target
    <root>/chunks/<aa>/<sha256>                             content-addressed chunks
    <root>/repository.json      hub-side settings (never served)

Target files carry their hash in the name (consistent snapshots), so a file is never
changed in place and a client that holds older metadata still finds what it names.

Every change writes in an order that keeps metadata pointing at files that exist:
chunks and target files first, then targets metadata, then snapshot, then timestamp.
A crash at any point leaves the previous release set current. One lock file makes
changes from several processes (the CLI, the serving hub's refresh job) take turns.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version
from pydantic import ValidationError
from securesystemslib.signer import Signer
from tuf.api.exceptions import LengthOrHashMismatchError
from tuf.api.metadata import Metadata, TargetFile, Targets

from edge_agent.atomic import write_atomic
from edge_agent.protocol import (
    INDEX_TARGET,
    MAX_FILE_BYTES,
    METADATA_DIR,
    FileEntry,
    ReleaseIndex,
    ReleaseManifest,
    Requirements,
    manifest_target,
    target_file,
)
from edge_agent.protocol.layout import MODEL_NAME
from hub.registry.chunk_store import StoreStats, store_file
from hub.registry.errors import (
    ReleaseNotFound,
    ReleaseRefused,
    RepositoryStateError,
    SigningKeyError,
)
from hub.registry.keys import ONLINE_ROLES, KeyStore
from hub.registry.metadata_store import Expiry, MetadataStore
from hub.registry.model_files import list_model_files, list_release_files
from hub.registry.repo_settings import (
    SETTINGS_FILE,
    ExpiryDays,
    RepositorySettings,
    load_settings,
    save_settings,
)

__all__ = ["Expiry", "ReleaseRepository"]

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
ROOT_WARNING_DAYS = 30


def target_file_path(root: Path, target: str, sha256: str) -> Path:
    return root / target_file(target, sha256)


class ReleaseRepository:
    """Create with `create()` or `open()`; every method reloads from disk under the lock."""

    def __init__(self, root: Path, keys_dir: Path, settings: RepositorySettings) -> None:
        self.root = root
        self.keys_dir = keys_dir
        self._settings = settings
        self._now: datetime | None = None
        self._thread_lock = threading.Lock()
        self._store = MetadataStore(
            root / METADATA_DIR,
            KeyStore(keys_dir),
            Expiry(**settings.expiry.model_dump()),
            self._clock,
        )

    # --- life cycle ----------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        root: Path,
        keys_dir: Path,
        *,
        root_keys: int = 1,
        root_threshold: int = 1,
        expiry: Expiry = Expiry(),  # noqa: B008 - frozen, so one shared default is safe
        root_metadata: Path | None = None,
    ) -> ReleaseRepository:
        """Make the keys and the first signed metadata (an empty release index).

        `root_metadata`: a root signed by the offline key ceremony (`edge-provision
        init-root`), whose online keys are in `keys_dir`; no root key is made here. Without
        it the root keys are made in `keys_dir/root-keys/` (demos and tests)."""
        root, keys_dir = root.expanduser(), keys_dir.expanduser()
        if not 1 <= root_threshold <= root_keys:
            raise ValueError(
                f"root threshold {root_threshold} must be between 1 and the number of root "
                f"keys ({root_keys})"
            )
        if _holds_repository(root):
            raise RepositoryStateError(
                f"{root}: already holds a release repository; open it instead, or remove "
                "the folder to start over"
            )
        settings = RepositorySettings(expiry=ExpiryDays(**asdict(expiry)))
        repo = cls(root, keys_dir, settings)
        root.mkdir(parents=True, exist_ok=True)
        (root / METADATA_DIR).mkdir(exist_ok=True)
        with repo._locked(load=False):
            keys = repo._store.keys
            if root_metadata is not None:
                repo._store.adopt_root(root_metadata.expanduser().read_bytes())
                repo._require_online_keys()
            else:
                with repo._store.edit_root() as new_root:
                    for _ in range(root_keys):
                        new_root.add_key(keys.generate("root").public_key, "root")
                    new_root.roles["root"].threshold = root_threshold
                    for role in ONLINE_ROLES:
                        new_root.add_key(keys.generate(role).public_key, role)
            store = repo._store
            with store.edit_targets() as targets:
                targets.targets[INDEX_TARGET] = repo._write_index(ReleaseIndex())
            # Set by hand once: do_snapshot and do_timestamp copy length and hashes only
            # when a version moves past the defaults that new metadata starts with.
            with store.edit_snapshot() as snapshot:
                snapshot.meta = dict(store.targets_infos)
            with store.edit_timestamp() as timestamp:
                timestamp.snapshot_meta = store.snapshot_info
            save_settings(root, settings)  # last: its presence marks a finished repository
        return repo

    @classmethod
    def open(cls, root: Path, keys_dir: Path) -> ReleaseRepository:
        root, keys_dir = root.expanduser(), keys_dir.expanduser()
        if not (root / SETTINGS_FILE).exists() and _holds_repository(root):
            raise RepositoryStateError(
                f"{root}: creating this repository did not finish; remove the folder and "
                "create it again"
            )
        repo = cls(root, keys_dir, load_settings(root))
        with repo._locked():
            pass  # loads the metadata, so a damaged repository is reported now
        return repo

    def adopt_root(self, root_file: Path) -> int:
        """Publish the next root version, signed by the offline key ceremony
        (`edge-provision rotate-root`); returns its version."""
        with self._locked():
            return self._store.adopt_root(root_file.expanduser().read_bytes())

    def trusted_root_path(self) -> Path:
        """The first root: what an agent pins at install and walks forward from."""
        return self.root / METADATA_DIR / "1.root.json"

    def signer(self, role: str) -> Signer:
        """A signer of `role` under the current root (for tests that craft metadata)."""
        with self._locked():
            found = self._store.signers(role)
        if not found:
            raise SigningKeyError(f"no {role} signing key is at hand in {self.keys_dir}")
        return found[0]

    # --- releases ------------------------------------------------------------------------

    def check_new_release(self, model: str, version: str) -> None:
        """Refuse a name or version that publish() would refuse, before slow work."""
        with self._locked():
            self._check_new_release(model, version)

    def publish(
        self,
        model_dir: Path,
        model: str,
        version: str,
        *,
        quantization: dict[str, Any] | None = None,
        requirements: Requirements | None = None,
        kind: str = "model",
        base: str | None = None,
    ) -> ReleaseManifest:
        """Chunk and sign a model folder as release `model` `version`.

        `kind="agent"`: the folder is the agent's offline installer (firmware-images/), not
        a model; the manifest says so in a `kind` field, so no device takes it for a model.
        `base` (NAME@VERSION): the model a LoRA adapter release runs on."""
        with self._locked():
            target = self._check_new_release(model, version)
            self._require_online_keys()
            folder = model_dir.expanduser()
            files = list_model_files(folder) if kind == "model" else list_release_files(folder)
            fields: dict[str, Any] = {
                "model": model,
                "version": version,
                "requirements": requirements or Requirements(),
                "quantization": quantization or {},
            }
            if kind != "model":  # model manifests stay byte for byte what they were
                fields["kind"] = kind
            if base is not None:
                fields["base"] = base
            _check_describable(model_dir, fields, files)  # before a chunk is written
            stats = StoreStats()
            entries = tuple(store_file(self.root, rel, path, stats) for rel, path in files)
            try:
                manifest = ReleaseManifest.model_validate({**fields, "files": entries})
            except ValidationError as exc:
                raise ReleaseRefused(f"{model_dir}: cannot describe this release: {exc}") from None
            manifest_file = self._write_target(target, _to_json(manifest))
            manifest_file.unrecognized_fields["custom"] = {"model": model, "version": version}
            index = self._read_index()
            models = {name: dict(versions) for name, versions in index.models.items()}
            models.setdefault(model, {})[version] = target
            index_file = self._write_index(ReleaseIndex(models=models))
            self._commit_targets({target: manifest_file, INDEX_TARGET: index_file}, [])
        log.info(
            "published %s %s: %d files, %d chunks, %d new (%d bytes)",
            model,
            version,
            len(entries),
            stats.chunks,
            stats.new_chunks,
            stats.new_bytes,
        )
        return manifest

    def revoke(self, model: str, version: str) -> None:
        """Stop listing a release; its version number stays used forever."""
        with self._locked():
            target = manifest_target(model, version)
            targets = self._targets()
            if target not in targets.targets:
                raise ReleaseNotFound(self._not_found(model, version))
            old_file = targets.targets[target]
            self._require_online_keys()
            # Record first: after a crash the version is still taken, and revoking again
            # finishes the job.
            revoked = self._settings.revoked.setdefault(model, [])
            if version not in revoked:
                revoked.append(version)
                save_settings(self.root, self._settings)
            index = self._read_index()
            models = {name: dict(versions) for name, versions in index.models.items()}
            models.get(model, {}).pop(version, None)
            models = {name: versions for name, versions in models.items() if versions}
            index_file = self._write_index(ReleaseIndex(models=models))
            self._commit_targets({INDEX_TARGET: index_file}, [target])
            # The signed metadata no longer names it; stop serving it too.
            target_file_path(self.root, target, old_file.hashes["sha256"]).unlink(missing_ok=True)
        log.info("revoked %s %s", model, version)

    def index(self) -> ReleaseIndex:
        with self._locked():
            return self._read_index()

    def manifest(self, model: str, version: str) -> ReleaseManifest:
        with self._locked():
            target = manifest_target(model, version)
            if target not in self._targets().targets:
                raise ReleaseNotFound(self._not_found(model, version))
            return ReleaseManifest.model_validate_json(self._read_target(target))

    # --- metadata upkeep -----------------------------------------------------------------

    def refresh(self, *, now: datetime | None = None, force: bool = False) -> list[str]:
        """Re-sign online metadata that is within half its lifetime of expiring.

        `force` re-signs snapshot and timestamp whatever their expiry. Metadata that the
        current keys do not sign (after a rotation was interrupted) is re-signed too.
        Returns the roles re-signed, in signing order.
        """
        when = _utc(now) if now is not None else None
        with self._locked(now=when):
            reference = self._clock()
            store = self._store
            resigned: list[str] = []
            targets_md = store.current("targets")
            if self._due("targets", targets_md, reference) or not store.verify(
                "targets", targets_md
            ):
                with store.edit_targets():
                    pass  # a new version of the same targets, freshly expired and signed
                resigned.append("targets")
            snapshot_due = force or self._due("snapshot", store.current("snapshot"), reference)
            if store.do_snapshot(force=snapshot_due)[0]:
                resigned.append("snapshot")
            timestamp_due = force or self._due("timestamp", store.current("timestamp"), reference)
            if store.do_timestamp(force=timestamp_due)[0]:
                resigned.append("timestamp")
            root = store.root()
            if root.expires - reference < timedelta(days=ROOT_WARNING_DAYS):
                log.warning(
                    "root metadata v%d expires %s: sign a new root with the offline root keys",
                    root.version,
                    root.expires.isoformat(),
                )
        return resigned

    def rotate_online_key(self, role: str) -> None:
        """Replace the key of an online role; the root keys sign the new root version."""
        if role not in ONLINE_ROLES:
            raise ValueError(
                f"cannot rotate {role!r} here: choose one of {', '.join(ONLINE_ROLES)} "
                "(root keys change in a key ceremony)"
            )
        with self._locked():
            store = self._store
            old_keyids = list(store.root().roles[role].keyids)
            new_signer = store.keys.generate(role)
            try:
                with store.edit_root() as new_root:
                    for keyid in old_keyids:
                        new_root.revoke_key(keyid, role)
                    new_root.add_key(new_signer.public_key, role)
            except BaseException:
                store.keys.discard(role, new_signer.public_key.keyid)
                raise
            if role == "targets":
                with store.edit_targets():
                    pass
            # Both notice metadata that the new root's keys do not sign, and re-sign it.
            store.do_snapshot()
            store.do_timestamp()
            for keyid in old_keyids:
                store.keys.retire(role, keyid)
            log.info("rotated the %s key: root v%d", role, store.root().version)

    # --- internals -----------------------------------------------------------------------

    @contextmanager
    def _locked(self, *, load: bool = True, now: datetime | None = None) -> Iterator[None]:
        with self._thread_lock, (self.root / LOCK_FILE).open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._now = now
            try:
                if load:
                    self._settings = load_settings(self.root)
                    self._store.load()
                yield
            finally:
                self._now = None

    def _clock(self) -> datetime:
        return self._now or datetime.now(UTC)

    def _due(self, role: str, md: Metadata[Any], reference: datetime) -> bool:
        half_life = timedelta(days=self._store.expiry.days(role)) / 2
        expires: datetime = md.signed.expires
        return reference >= expires - half_life

    def _targets(self) -> Targets:
        signed = self._store.current("targets").signed
        assert isinstance(signed, Targets)
        return signed

    def _check_new_release(self, model: str, version: str) -> str:
        if not MODEL_NAME.fullmatch(model):
            raise ReleaseRefused(
                f"invalid model name {model!r}: use 1-64 of a-z 0-9 . _ -, starting alphanumeric"
            )
        try:
            target = manifest_target(model, version)
            wanted = Version(version)
        except (ValueError, InvalidVersion):
            raise ReleaseRefused(
                f"invalid version {version!r}: versions look like 1.4.0 "
                "(PEP 440; 1-64 of 0-9 A-Z a-z . + _ -)"
            ) from None
        taken = [*self._read_index().versions(model), *self._settings.revoked.get(model, [])]
        if any(Version(v) == wanted for v in taken):
            raise ReleaseRefused(
                f"{model} {version} was already published (or revoked); pick a newer version"
            )
        newest = max(taken, key=Version, default=None)
        if newest is not None and wanted <= Version(newest):
            raise ReleaseRefused(
                f"{model} {version} is not newer than {newest}, the newest version published "
                "so far (revoked ones count: devices may hold them); pick a newer version"
            )
        return target

    def _require_online_keys(self) -> None:
        """Fail before writing anything when a signature could not be made afterwards."""
        for role in ONLINE_ROLES:
            self._store.signers(role)

    def _not_found(self, model: str, version: str) -> str:
        listed = ", ".join(self._read_index().versions(model)) or "none"
        return (
            f"no release {model} {version} in {self.root} (listed versions of {model}: "
            f"{listed}); `edge-hub model list` shows every release"
        )

    def _read_index(self) -> ReleaseIndex:
        return ReleaseIndex.model_validate_json(self._read_target(INDEX_TARGET))

    def _read_target(self, target: str) -> bytes:
        info = self._targets().targets.get(target)
        if info is None:
            raise RepositoryStateError(f"{self.root}: the targets metadata lists no {target}")
        path = target_file_path(self.root, target, info.hashes["sha256"])
        try:
            data = path.read_bytes()
            info.verify_length_and_hashes(data)
        except OSError as exc:
            raise RepositoryStateError(
                f"{path}: cannot read target {target}: {exc.strerror}; the repository is "
                "damaged: restore the targets folder from backup"
            ) from None
        except LengthOrHashMismatchError:
            raise RepositoryStateError(
                f"{path}: does not match the signed targets metadata; the repository is "
                "damaged: restore the targets folder from backup"
            ) from None
        return data

    def _write_target(self, target: str, data: bytes) -> TargetFile:
        sha256 = hashlib.sha256(data).hexdigest()
        write_atomic(target_file_path(self.root, target, sha256), data)
        return TargetFile.from_data(target, data, ["sha256"])

    def _write_index(self, index: ReleaseIndex) -> TargetFile:
        return self._write_target(INDEX_TARGET, _to_json(index))

    def _commit_targets(self, put: dict[str, TargetFile], remove: list[str]) -> None:
        """New targets metadata with these changes, then snapshot, then timestamp."""
        store = self._store
        with store.edit_targets() as targets:
            for name in remove:
                targets.targets.pop(name, None)
            targets.targets.update(put)
        store.do_snapshot()
        store.do_timestamp()


def _check_describable(
    model_dir: Path, fields: dict[str, Any], files: list[tuple[str, Path]]
) -> None:
    """Refuse what the manifest could not hold (file count, paths, sizes, fields)."""
    for _relative, path in files:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ReleaseRefused(
                f"{path}: larger than {MAX_FILE_BYTES} bytes, the most a file may be"
            )
    try:
        empty = [FileEntry(path=rel, size=0, sha256="0" * 64, chunks=()) for rel, _path in files]
        ReleaseManifest.model_validate({**fields, "files": empty})
    except ValidationError as exc:
        raise ReleaseRefused(f"{model_dir}: cannot describe this release: {exc}") from None


def _holds_repository(root: Path) -> bool:
    metadata = root / METADATA_DIR
    return (root / SETTINGS_FILE).exists() or (
        metadata.is_dir() and any(metadata.glob("*.root.json"))
    )


def _to_json(model: ReleaseManifest | ReleaseIndex) -> bytes:
    return (model.model_dump_json(indent=2) + "\n").encode()


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)

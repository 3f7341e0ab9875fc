"""A release repository seen through python-tuf's ngclient: only verified bytes come out.

Metadata (root, timestamp, snapshot, targets) is checked by ngclient: signatures and
thresholds, expiry, version rollback, hashes and lengths. The index and the manifests are
TUF targets, downloaded and checked the same way. A chunk is trusted because the
verified manifest names its hash; the caller checks it against that hash.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError
from tuf.api import exceptions as tuf_errors
from tuf.ngclient import Updater, UpdaterConfig

from edge_agent.atomic import make_dirs, write_atomic
from edge_agent.protocol import (
    INDEX_TARGET,
    METADATA_DIR,
    TARGETS_DIR,
    ReleaseIndex,
    ReleaseManifest,
    chunk_path,
    manifest_target,
)
from edge_agent.updates.chunks import ChunkChain, ChunkSource
from edge_agent.updates.errors import (
    AccessDenied,
    DownloadFailed,
    NotTrusted,
    Refused,
    RepositoryError,
)
from edge_agent.updates.fetchers import Fetcher

ROOT_FILE = "root.json"


@dataclass(frozen=True, kw_only=True)
class SourceLimits:
    """Hard limits against endless data, in bytes."""

    max_root_bytes: int = 512 * 1024
    max_timestamp_bytes: int = 16 * 1024
    max_snapshot_bytes: int = 2 * 1024 * 1024
    max_targets_bytes: int = 8 * 1024 * 1024
    # The release index and each manifest: the signed targets give their exact length, but
    # a stolen targets key could list a gigabyte; refused before any of it is downloaded.
    max_target_bytes: int = 16 * 1024 * 1024
    max_root_rotations: int = 32


def pin_root(trust_dir: Path, root_json: Path, *, replace: bool = False) -> None:
    """Install the trusted root that every later update is checked against."""
    from tuf.api.metadata import Metadata, Root

    target = trust_dir / ROOT_FILE
    if target.exists() and not replace:
        raise NotTrusted(f"{target} already holds a trusted root; pass --replace to change it")
    data = root_json.read_bytes()
    try:
        Metadata[Root].from_bytes(data)
    except Exception as exc:  # the Metadata API raises several kinds for bad input
        raise NotTrusted(f"{root_json} is not TUF root metadata: {exc}") from exc
    make_dirs(trust_dir)
    for stale in ("timestamp.json", "snapshot.json", "targets.json"):
        (trust_dir / stale).unlink(missing_ok=True)
    write_atomic(target, data)  # the trust anchor must survive a power cut whole


class ReleaseSource:
    def __init__(
        self,
        base_url: str,
        trust_dir: Path,
        fetcher: Fetcher,
        limits: SourceLimits | None = None,
        peers: Sequence[ChunkSource] = (),
    ) -> None:
        """`peers`: LAN peers asked for each chunk before this repository (chunks.py)."""
        if not (trust_dir / ROOT_FILE).is_file():
            raise NotTrusted(
                f"no trusted root in {trust_dir}: pin the fleet's root.json first "
                "(edge-agent trust PATH)"
            )
        self.base_url = base_url
        self.fetcher = fetcher
        self.limits = limits or SourceLimits()
        self._downloads = Path(tempfile.mkdtemp(prefix="edge-targets-"))
        config = UpdaterConfig(
            max_root_rotations=self.limits.max_root_rotations,
            root_max_length=self.limits.max_root_bytes,
            timestamp_max_length=self.limits.max_timestamp_bytes,
            snapshot_max_length=self.limits.max_snapshot_bytes,
            targets_max_length=self.limits.max_targets_bytes,
        )
        self._updater = Updater(
            metadata_dir=str(trust_dir),
            metadata_base_url=f"{base_url}{METADATA_DIR}/",
            target_base_url=f"{base_url}{TARGETS_DIR}/",
            target_dir=str(self._downloads),
            fetcher=fetcher,
            config=config,
            bootstrap=None,  # the root pinned at install, kept current by ngclient
        )
        self._refreshed = False
        self.chunks = ChunkChain([*peers, _RepositoryChunks(base_url, fetcher)])

    def close(self) -> None:
        self.chunks.close()  # the repository's fetcher among them
        shutil.rmtree(self._downloads, ignore_errors=True)

    def __enter__(self) -> ReleaseSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def refresh(self) -> None:
        """Fetch and verify fresh metadata: the top-level roles, in TUF's order."""
        with _translated("refreshing metadata"):
            self._updater.refresh()
        self._refreshed = True

    def _target(self, path: str, what: str) -> bytes:
        if not self._refreshed:
            self.refresh()
        with _translated(f"fetching {what}"):
            info = self._updater.get_targetinfo(path)
            if info is None:
                raise Refused(f"{what} is not listed in the signed targets (revoked or unknown)")
            if info.length > self.limits.max_target_bytes:
                raise RepositoryError(
                    f"{what} is listed at {info.length} bytes, more than the "
                    f"{self.limits.max_target_bytes} this agent accepts; nothing was downloaded. "
                    "Ask the fleet's operator to check the repository's signing keys"
                )
            local = self._updater.download_target(
                info, str(self._downloads / info.path.replace("/", "_"))
            )
        return Path(local).read_bytes()

    def index(self) -> ReleaseIndex:
        data = self._target(INDEX_TARGET, "the release index")
        try:
            return ReleaseIndex.model_validate_json(data)
        except ValidationError as exc:
            raise RepositoryError(f"the signed release index is malformed: {exc}") from exc

    def manifest(self, model: str, version: str) -> ReleaseManifest:
        what = f"release {model} {version}"
        data = self._target(manifest_target(model, version), what)
        try:
            manifest = ReleaseManifest.model_validate_json(data)
        except ValidationError as exc:
            raise RepositoryError(f"the manifest of {what} is malformed: {exc}") from exc
        if (manifest.model, manifest.version) != (model, version):
            raise RepositoryError(
                f"the manifest listed as {what} describes {manifest.model} {manifest.version}"
            )
        return manifest

    def chunk(self, sha256: str, size: int) -> bytes:
        """A chunk's bytes, checked against `sha256` (CorruptChunk if no source had them
        right); from a peer where one has it, else from this repository."""
        return self.chunks.chunk(sha256, size)


class _RepositoryChunks:
    """The repository's own chunks: the last source of the chain."""

    label = "the release repository"

    def __init__(self, base_url: str, fetcher: Fetcher) -> None:
        self.base_url = base_url
        self.fetcher = fetcher

    def chunk(self, sha256: str, size: int) -> bytes:
        url = self.base_url + chunk_path(sha256)
        with _translated(f"fetching chunk {sha256[:12]}..."):
            return self.fetcher.fetch_limited(url, size)

    def close(self) -> None:
        self.fetcher.close()


class _translated:
    """Re-raise python-tuf's errors as ours, split by who is at fault."""

    def __init__(self, doing: str) -> None:
        self.doing = doing

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, _tb: object
    ) -> None:
        if exc is None or isinstance(exc, (Refused, RepositoryError, DownloadFailed)):
            return
        if isinstance(exc, tuf_errors.DownloadLengthMismatchError):
            raise RepositoryError(
                f"{self.doing}: the repository sent too much data ({exc})"
            ) from exc
        status = getattr(exc, "status_code", None)
        if isinstance(exc, tuf_errors.DownloadHTTPError) and status in (401, 403):
            raise AccessDenied(
                f"{self.doing}: the hub refused this device's token (HTTP {status}); "
                "check [updates] token, or have the operator issue a new one"
            ) from exc
        if isinstance(exc, tuf_errors.DownloadError):
            raise DownloadFailed(f"{self.doing}: {exc}; retry when the link is back") from exc
        if isinstance(exc, tuf_errors.RepositoryError):
            kind_name = type(exc).__name__
            raise RepositoryError(f"{self.doing}: {kind_name}: {exc}") from exc

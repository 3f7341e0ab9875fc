"""Model versions on disk, and the chunks they are built from.

    <root>/models/<model>/versions/<version>/   a complete model folder (+ .release.json)
    <root>/models/<model>/active   -> versions/<version>
    <root>/models/<model>/previous -> versions/<version>
    <root>/chunks/<aa>/<sha256>                  downloaded chunks of a pending release
    <root>/staging/                              versions being assembled
    <root>/floors.json                           the lowest version each model may run

A version folder appears by one rename once every file in it is verified; `active`
moves by one symlink swap. A crash at any instant leaves the old version active or the
new one, and at most some staging or chunk files that `gc()` removes.

A chunk that any installed version already holds is read from that version's files
(located through its manifest) instead of downloaded or stored twice, and a whole file
that an installed version already holds is shared with it (a hard link, else a reflink;
see sharing.py) instead of written again. Installed model files are read-only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from packaging.version import Version
from pydantic import ValidationError

from edge_agent import faults
from edge_agent.atomic import fsync_dir, make_dirs, swap_symlink, write_atomic
from edge_agent.protocol import FileEntry, ReleaseManifest
from edge_agent.store.errors import CorruptChunk, StoreError, VersionMissing
from edge_agent.store.sharing import make_read_only, share_file

RELEASE_FILE = ".release.json"
COPY_BUFFER_BYTES = 1 << 20


@dataclass(frozen=True)
class InstalledVersion:
    model: str
    version: str
    path: Path
    manifest: ReleaseManifest


@dataclass
class GcReport:
    removed_versions: list[str] = field(default_factory=list)
    removed_chunks: int = 0
    removed_staging: int = 0


@dataclass(frozen=True)
class VersionUsage:
    size: int  # all its files
    adds: int  # what it takes beyond the older versions it shares files with


def _holds(path: Path, size: int, sha256: str) -> bool:
    """Whether an installed file still has the bytes its manifest promised (bit rot and
    hand edits happen; a damaged file must not be shared into a new version)."""
    try:
        if path.stat().st_size != size:
            return False
        with path.open("rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest() == sha256
    except OSError:
        return False


@dataclass(frozen=True)
class _Located:
    path: Path
    offset: int
    size: int


def release_of(folder: Path) -> tuple[str, str] | None:
    """(model, version) of an installed version's folder, `<root>/models/<model>/versions/
    <version>`; None for a folder the store did not install."""
    parts = folder.parts
    if len(parts) >= 4 and parts[-2] == "versions" and parts[-4] == "models":
        return parts[-3], parts[-1]
    return None


class ModelStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.models_dir = root / "models"
        self.chunks_dir = root / "chunks"
        self.staging_dir = root / "staging"
        self.floors_path = root / "floors.json"

    # --- what is installed ---------------------------------------------------------------

    def models(self) -> list[str]:
        if not self.models_dir.is_dir():
            return []
        return sorted(p.name for p in self.models_dir.iterdir() if (p / "versions").is_dir())

    def versions(self, model: str) -> list[str]:
        folder = self.models_dir / model / "versions"
        if not folder.is_dir():
            return []
        found = [p.name for p in folder.iterdir() if (p / RELEASE_FILE).is_file()]
        return sorted(found, key=Version)

    def version(self, model: str, version: str) -> InstalledVersion:
        path = self.models_dir / model / "versions" / version
        try:
            manifest = ReleaseManifest.model_validate_json((path / RELEASE_FILE).read_bytes())
        except FileNotFoundError:
            raise VersionMissing(f"{model} {version} is not installed") from None
        except ValidationError as exc:
            raise StoreError(f"{path / RELEASE_FILE} is damaged: {exc}") from exc
        return InstalledVersion(model, version, path, manifest)

    def active(self, model: str) -> InstalledVersion | None:
        return self._pointer(model, "active")

    def previous(self, model: str) -> InstalledVersion | None:
        return self._pointer(model, "previous")

    def _pointer(self, model: str, name: str) -> InstalledVersion | None:
        link = self.models_dir / model / name
        if not link.is_symlink():
            return None
        version = link.readlink().name
        try:
            return self.version(model, version)
        except VersionMissing:
            return None

    # --- floors --------------------------------------------------------------------------

    def floor(self, model: str) -> Version | None:
        value = self._floors().get(model)
        return Version(value) if value else None

    def raise_floor(self, model: str, version: str) -> None:
        floors = self._floors()
        current = floors.get(model)
        if current is None or Version(version) > Version(current):
            floors[model] = version
            write_atomic(self.floors_path, json.dumps(floors, indent=2).encode())

    def lower_floor(self, model: str, version: str) -> None:
        """Set the floor to exactly `version`, below where it is: only for a signed rollback
        (edge_agent.updates.rollback decides); never raises it."""
        floors = self._floors()
        current = floors.get(model)
        if current is not None and Version(version) < Version(current):
            floors[model] = version
            write_atomic(self.floors_path, json.dumps(floors, indent=2).encode())

    def _floors(self) -> dict[str, str]:
        try:
            data = json.loads(self.floors_path.read_bytes())
        except FileNotFoundError:
            return {}
        except json.JSONDecodeError as exc:
            raise StoreError(f"{self.floors_path} is damaged: {exc}") from exc
        return {str(k): str(v) for k, v in data.items()}

    # --- chunks --------------------------------------------------------------------------

    def chunk_file(self, sha256: str) -> Path:
        return self.chunks_dir / sha256[:2] / sha256

    def _local_index(self) -> dict[str, _Located]:
        """Every chunk that an installed version's files hold, by hash."""
        index: dict[str, _Located] = {}
        for model in self.models():
            for version in self.versions(model):
                installed = self.version(model, version)
                for entry in installed.manifest.files:
                    offset = 0
                    for chunk in entry.chunks:
                        index.setdefault(
                            chunk.sha256, _Located(installed.path / entry.path, offset, chunk.size)
                        )
                        offset += chunk.size
        return index

    def not_installed_chunks(self, manifest: ReleaseManifest) -> dict[str, int]:
        """Chunks of `manifest` that no installed version holds."""
        local = self._local_index()
        return {sha: n for sha, n in manifest.unique_chunks().items() if sha not in local}

    def missing_chunks(self, manifest: ReleaseManifest) -> dict[str, int]:
        """Chunks of `manifest` that are neither downloaded nor in an installed version."""
        needed = self.not_installed_chunks(manifest).items()
        return {sha: size for sha, size in needed if not self.chunk_file(sha).is_file()}

    def put_chunk(self, sha256: str, data: bytes) -> None:
        """Store a downloaded chunk, after checking it is the one the manifest names."""
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise CorruptChunk(f"chunk {sha256[:12]}... arrived with hash {actual[:12]}...")
        write_atomic(self.chunk_file(sha256), data)

    def _read_chunk(self, sha256: str, size: int, local: dict[str, _Located]) -> bytes:
        path = self.chunk_file(sha256)
        if path.is_file():
            data = path.read_bytes()
        elif sha256 in local:
            where = local[sha256]
            with where.path.open("rb") as handle:
                handle.seek(where.offset)
                data = handle.read(where.size)
        else:
            raise StoreError(f"chunk {sha256[:12]}... is neither downloaded nor installed")
        if len(data) != size or hashlib.sha256(data).hexdigest() != sha256:
            if path.is_file():  # a downloaded copy: drop it alone, the next try fetches it
                path.unlink()
            raise CorruptChunk(f"stored chunk {sha256[:12]}... is damaged; fetch it again")
        return data

    # --- install, activate, roll back ----------------------------------------------------

    def assemble(self, manifest: ReleaseManifest) -> InstalledVersion:
        """Build the version folder from verified chunks; one rename makes it appear."""
        target = self.models_dir / manifest.model / "versions" / manifest.version
        if (target / RELEASE_FILE).is_file():
            return self.version(manifest.model, manifest.version)
        local = self._local_index()
        make_dirs(self.staging_dir)
        staging = Path(tempfile.mkdtemp(prefix=f"{manifest.model}-", dir=self.staging_dir))
        try:
            installed_files = self._installed_files()
            for entry in manifest.files:
                out = staging / entry.path
                make_dirs(out.parent)
                twin = installed_files.get(entry.sha256)
                if twin is None or not _holds(twin, entry.size, entry.sha256):
                    self._write_from_chunks(out, entry, local)
                else:
                    share_file(twin, out)
                faults.checkpoint("file-assembled")
            # A synced file is lost with its name unless its folder is synced too; the
            # top folder is synced by write_atomic below.
            for folder in {(staging / entry.path).parent for entry in manifest.files}:
                fsync_dir(folder)
            write_atomic(staging / RELEASE_FILE, manifest.model_dump_json(indent=2).encode())
            make_dirs(target.parent)
            if target.exists():  # an incomplete folder from an older, interrupted layout
                shutil.rmtree(target)
            staging.rename(target)
            fsync_dir(target.parent)
            faults.checkpoint("version-renamed")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return self.version(manifest.model, manifest.version)

    def _installed_files(self) -> dict[str, Path]:
        """A file of an installed version for each whole-file hash, to share instead of
        assembling it again."""
        found: dict[str, Path] = {}
        for model in self.models():
            for version in self.versions(model):
                installed = self.version(model, version)
                for entry in installed.manifest.files:
                    found.setdefault(entry.sha256, installed.path / entry.path)
        return found

    def _write_from_chunks(self, out: Path, entry: FileEntry, local: dict[str, _Located]) -> None:
        digest = hashlib.sha256()
        with out.open("xb") as handle:
            for chunk in entry.chunks:
                data = self._read_chunk(chunk.sha256, chunk.size, local)
                digest.update(data)
                handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if digest.hexdigest() != entry.sha256:
            raise CorruptChunk(f"{entry.path} does not match its manifest hash")
        make_read_only(out)

    def disk_usage(self, model: str) -> dict[str, VersionUsage]:
        """Per version: its files' size, and the bytes it adds on disk, counting a file
        that an older installed version shares (the same inode) as free."""
        seen: set[tuple[int, int]] = set()
        usage: dict[str, VersionUsage] = {}
        for version in self.versions(model):
            folder = self.version(model, version).path
            size = adds = 0
            for path in folder.rglob("*"):
                info = path.lstat()
                if not stat.S_ISREG(info.st_mode):
                    continue
                size += info.st_size
                key = (info.st_dev, info.st_ino)
                if key not in seen:
                    seen.add(key)
                    adds += info.st_size
            usage[version] = VersionUsage(size=size, adds=adds)
        return usage

    def activate(self, model: str, version: str) -> None:
        """`previous` := the active version, then `active` := `version`."""
        self.version(model, version)  # refuse a version that is not complete
        home = self.models_dir / model
        current = self.active(model)
        if current is not None and current.version != version:
            swap_symlink(home / "previous", f"versions/{current.version}")
        swap_symlink(home / "active", f"versions/{version}")

    def restore(self, model: str, version: str | None) -> None:
        """Undo a failed activation: `version` active again (None: nothing active)."""
        home = self.models_dir / model
        if version is None:
            (home / "active").unlink(missing_ok=True)
        else:
            self.version(model, version)
            swap_symlink(home / "active", f"versions/{version}")
        previous = self.previous(model)
        if previous is not None and previous.version == version:
            (home / "previous").unlink()
        fsync_dir(home)

    def rollback(self, model: str) -> str:
        """Make the previous version active again; returns it."""
        if not self.versions(model):
            installed = ", ".join(self.models()) or "none"
            raise VersionMissing(
                f"{model} is not installed (installed: {installed}); `edge-agent models` lists them"
            )
        before = self.previous(model)
        if before is None:
            raise VersionMissing(f"{model} has no previous version to roll back to")
        home = self.models_dir / model
        swap_symlink(home / "active", f"versions/{before.version}")
        with contextlib.suppress(FileNotFoundError):
            (home / "previous").unlink()
        fsync_dir(home)
        return before.version

    # --- garbage collection --------------------------------------------------------------

    def gc(self, *, keep: Iterable[ReleaseManifest] = ()) -> GcReport:
        """Remove what no pointer and no pending release needs.

        Kept: the active and previous version of every model, and the chunks of the
        `keep` manifests (a download in progress) that no installed version holds.
        """
        report = GcReport()
        if self.staging_dir.is_dir():
            for entry in self.staging_dir.iterdir():
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink()
                report.removed_staging += 1
        for model in self.models():
            home = self.models_dir / model
            for stray in home.glob("*.tmp-link"):
                stray.unlink()
            wanted = {v.version for v in (self.active(model), self.previous(model)) if v}
            for folder in (home / "versions").iterdir():
                if folder.name not in wanted:
                    shutil.rmtree(folder)
                    report.removed_versions.append(f"{model} {folder.name}")
        needed = {sha for manifest in keep for sha in self.not_installed_chunks(manifest)}
        if self.chunks_dir.is_dir():
            for path in self.chunks_dir.rglob("*"):
                if path.is_file() and (path.name not in needed or path.name.startswith(".")):
                    path.unlink()
                    report.removed_chunks += 1
        return report

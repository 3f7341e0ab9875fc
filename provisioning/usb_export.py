"""Write a USB bundle for an air-gapped site (layout: edge_agent.protocol.bundle).

The stick gets the repository's current TUF metadata (every root version, so a device with
an old root walks forward), the release index, the manifests of the named releases and
only the chunks some named device lacks, judged from what each last reported (its active
and previous versions; a device that never reported gets every chunk). Chunks keep the
repository's names (`chunks/<aa>/<sha256>`), so a device's store and a LAN peer use the
same paths. Each device's signed desired state (with its maintenance window) goes along when
the hub database has one.

Then the authorisation, signed by the offline-bundle key: the releases, the devices (named
or through their group), the site, a validity of at most 90 days, the hash of the
timestamp it vouches for, and every file with its size and sha256. Last, a verification
pass re-reads the stick from the device (page cache dropped) and checks every byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from securesystemslib.signer import Signer
from tuf.api.metadata import Metadata, Root, Snapshot, Targets, Timestamp

from edge_agent.protocol import (
    INDEX_TARGET,
    METADATA_DIR,
    ReleaseManifest,
    chunk_path,
    manifest_target,
    target_file,
)
from edge_agent.protocol.bundle import (
    AUTHORISATION_FILE,
    BUNDLE_DIR,
    DEFAULT_VALIDITY,
    DESIRED_DIR,
    RECEIPTS_DIR,
    REPOSITORY_DIR,
    Authorisation,
    BundleFile,
    BundleRelease,
    offline_role,
    sign_authorisation,
    verify_authorisation,
)

Progress = Callable[[str, int, int], None]  # (phase, bytes done, bytes in the phase)
BLOCK = 1024 * 1024


class ExportError(Exception):
    """The bundle could not be written or did not verify; the message says what to do."""


@dataclass(frozen=True)
class ExportSummary:
    folder: Path
    authorisation: Authorisation
    chunk_bytes: int  # chunks written
    release_bytes: int  # every chunk of the named releases (what a full copy would carry)
    total_bytes: int  # everything listed on the stick


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _current_metadata(metadata: Path) -> tuple[list[str], Timestamp, Root]:
    """File names of the current chain (timestamp -> snapshot -> targets) and all roots."""
    timestamp_md = Metadata[Timestamp].from_file(str(metadata / "timestamp.json"))
    snapshot_name = f"{timestamp_md.signed.snapshot_meta.version}.snapshot.json"
    snapshot = Metadata[Snapshot].from_file(str(metadata / snapshot_name)).signed
    targets_name = f"{snapshot.meta['targets.json'].version}.targets.json"
    roots = sorted(
        (p.name for p in metadata.glob("*.root.json") if p.name.split(".")[0].isdigit()),
        key=lambda name: int(name.split(".")[0]),
    )
    root = Metadata[Root].from_file(str(metadata / roots[-1])).signed
    return [*roots, "timestamp.json", snapshot_name, targets_name], timestamp_md.signed, root


def _target_name(targets: Targets, target: str) -> str:
    info = targets.targets.get(target)
    if info is None:
        raise ExportError(f"{target} is not listed in the repository's signed targets")
    return target_file(target, info.hashes["sha256"])


def held_chunks(manifests: Iterable[ReleaseManifest]) -> set[str]:
    return {sha for manifest in manifests for sha in manifest.unique_chunks()}


def export_bundle(
    repository: Path,
    stick: Path,
    *,
    releases: list[BundleRelease],
    devices: list[str],
    groups: list[str],
    site: str,
    signers: list[Signer],
    held: Mapping[str, list[tuple[str, str]]] | None = None,
    validity: timedelta = DEFAULT_VALIDITY,
    now: datetime | None = None,
    progress: Progress | None = None,
    receipts_dir: Path | None = None,
    desired: Mapping[str, bytes] | None = None,
    peers: list[str] | None = None,
) -> ExportSummary:
    """Write `stick`/edge-bundle/ for `devices`; `held`: device id -> (model, version) it
    holds (from its last report); `receipts_dir`: where `edge-hub import` keeps receipts."""
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    metadata = repository / METADATA_DIR
    names, timestamp, root = _current_metadata(metadata)
    if timestamp.is_expired(now):
        raise ExportError(
            "the repository's timestamp has expired; refresh it first (`edge-hub repo "
            "refresh`), so the stick carries metadata that was fresh when it was signed"
        )
    targets = Metadata[Targets].from_file(str(metadata / names[-1])).signed
    bundle = stick / BUNDLE_DIR
    if bundle.exists():
        shutil.rmtree(bundle)  # a stick is rewritten whole: no stale file may stay listed
    out = bundle / REPOSITORY_DIR
    plan: list[tuple[str, Path, str | None]] = [  # (relative path, source, known sha256)
        (f"{METADATA_DIR}/{name}", metadata / name, None) for name in names
    ]
    index_name = _target_name(targets, INDEX_TARGET)
    plan.append((index_name, repository / index_name, None))
    manifests: dict[tuple[str, str], ReleaseManifest] = {}

    def manifest_of(model: str, version: str) -> ReleaseManifest | None:
        key = (model, version)
        if key not in manifests:
            try:
                name = _target_name(targets, manifest_target(model, version))
            except ExportError:
                return None  # a held version the repository no longer lists: holds nothing
            manifests[key] = ReleaseManifest.model_validate_json((repository / name).read_bytes())
        return manifests[key]

    wanted: dict[str, int] = {}
    release_bytes = 0
    for release in releases:
        name = _target_name(targets, manifest_target(release.model, release.version))
        plan.append((name, repository / name, None))
        manifest = manifest_of(release.model, release.version)
        assert manifest is not None
        chunks = manifest.unique_chunks()
        release_bytes += sum(chunks.values())
        for device in devices:
            pairs = (held or {}).get(device, [])
            holds = held_chunks(m for pair in pairs if (m := manifest_of(*pair)))
            wanted.update({sha: size for sha, size in chunks.items() if sha not in holds})
    plan.extend((chunk_path(sha), repository / chunk_path(sha), sha) for sha in sorted(wanted))
    # What `edge-hub import` stored from each device: signed with the bundle, so a device
    # drops a message from its outbox only on the hub's word.
    for device in sorted(set(devices)):
        receipt = receipts_dir / f"{device}.json" if receipts_dir is not None else None
        if receipt is not None and receipt.is_file():
            plan.append((f"{RECEIPTS_DIR}/{device}.json", receipt, None))

    # Each device's signed desired state (with its window), as the hub's database holds it.
    desired_dir = Path(tempfile.mkdtemp(prefix="edge-bundle-desired-"))
    for device, signed in sorted((desired or {}).items()):
        if device in devices:
            source = desired_dir / f"{device}.json"
            source.parent.mkdir(parents=True, exist_ok=True)
            source.write_bytes(signed)
            plan.append((f"{DESIRED_DIR}/{device}.json", source, None))

    total = sum(source.stat().st_size for _rel, source, _sha in plan)
    files: list[BundleFile] = []
    done = 0
    for rel, source, known in plan:
        destination = out / rel
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destination)
        size = destination.stat().st_size
        # A chunk's name is its hash in the hub's content-addressed store; the rest is hashed.
        files.append(BundleFile(path=rel, size=size, sha256=known or _sha256_file(source)))
        done += size
        if progress is not None:
            progress("write", done, total)
    authorisation = Authorisation(
        bundle_id=uuid.uuid4().hex,
        site=site,
        issued_at=now,
        expires=now + validity,
        releases=releases,
        devices=sorted(set(devices)),
        groups=sorted(set(groups)),
        peers=list(dict.fromkeys(peers or [])),
        timestamp_sha256=_sha256_file(metadata / "timestamp.json"),
        files=files,
    )
    (bundle / AUTHORISATION_FILE).write_bytes(sign_authorisation(authorisation, signers))
    shutil.rmtree(desired_dir, ignore_errors=True)
    _sync_tree(bundle)
    verify_stick(stick, root, progress)
    return ExportSummary(bundle, authorisation, sum(wanted.values()), release_bytes, done)


def _sync_tree(folder: Path) -> None:
    """Make the stick's bytes durable before it is pulled, then drop them from the page
    cache so the verification pass reads the medium, not memory."""
    for path in [*folder.rglob("*"), folder]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            if path.is_file():
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def verify_stick(stick: Path, root: Root, progress: Progress | None = None) -> Authorisation:
    """Re-read the written bundle: the authorisation verifies and every file matches."""
    bundle = stick / BUNDLE_DIR
    authorisation = verify_authorisation(
        (bundle / AUTHORISATION_FILE).read_bytes(), offline_role(root.to_dict())
    )
    total = authorisation.total_bytes()
    done = 0
    for entry in authorisation.files:
        path = bundle / REPOSITORY_DIR / entry.path
        if not path.is_file() or path.stat().st_size != entry.size:
            raise ExportError(f"{path}: missing or of the wrong size on the stick; write it again")
        if _sha256_file(path) != entry.sha256:
            raise ExportError(
                f"{path}: the stick returned other bytes than were written; "
                "the stick may be failing: use another one"
            )
        done += entry.size
        if progress is not None:
            progress("verify", done, total)
    return authorisation


def describe(summary: ExportSummary) -> str:
    a = summary.authorisation
    return json.dumps(
        {
            "bundle": str(summary.folder),
            "bundle_id": a.bundle_id,
            "site": a.site,
            "releases": [f"{r.model} {r.version}" for r in a.releases],
            "devices": len(a.devices),
            "expires": a.expires.isoformat(),
            "chunk_bytes": summary.chunk_bytes,
            "release_bytes": summary.release_bytes,
        }
    )

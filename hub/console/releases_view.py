"""What the models-and-releases pages show, read from the signed release repository: every
release (listed or revoked) with the devices that run it, and one release's files, the chunks
it shares with the release before it (what a device that holds that one must still fetch),
and the TUF signatures that vouch for it, with their expiry."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from packaging.version import Version
from sqlalchemy import Engine, func
from sqlmodel import col, select
from tuf.api.metadata import Targets

from edge_agent.protocol import METADATA_DIR, ReleaseManifest, manifest_target
from hub.db import session
from hub.fleet.models import ReportedModelState
from hub.registry.keys import KeyStore
from hub.registry.metadata_store import Expiry, MetadataStore
from hub.registry.repo_settings import load_settings
from hub.registry.repository import ReleaseRepository

ROLES = ("root", "targets", "snapshot", "timestamp")


@dataclass(frozen=True)
class ReleaseRow:
    model: str
    version: str
    revoked: bool
    devices: int  # reporting it active


@dataclass(frozen=True)
class Signature:
    role: str
    version: int
    expires: datetime
    expired: bool
    keyids: list[str]
    threshold: int
    verified: bool  # the current root's threshold of this role's keys signs it


@dataclass(frozen=True)
class ReleaseDetail:
    manifest: ReleaseManifest
    total_bytes: int
    chunks: int  # distinct
    chunk_bytes: int  # distinct chunks' bytes (what a device with nothing fetches)
    previous: str | None  # the listed release before this one
    shared_chunks: int
    shared_bytes: int
    to_move_bytes: int  # what a device that holds `previous` fetches
    target_sha256: str | None
    target_length: int | None
    signatures: list[Signature]


def releases(repository: ReleaseRepository, engine: Engine) -> dict[str, list[ReleaseRow]]:
    """Model -> its releases, newest first; revoked ones stay listed as revoked."""
    listed = repository.index().models
    revoked = load_settings(repository.root).revoked
    with session(engine) as db:
        running = db.exec(
            select(ReportedModelState.model, ReportedModelState.active, func.count())
            .where(col(ReportedModelState.active).is_not(None))
            .group_by(col(ReportedModelState.model), col(ReportedModelState.active))
        ).all()  # fmt: skip
    devices = {(m, v): n for m, v, n in running}
    shown: dict[str, list[ReleaseRow]] = {}
    for model in sorted({*listed, *revoked}):
        versions = [(v, False) for v in listed.get(model, {})]
        versions += [(v, True) for v in revoked.get(model, [])]
        rows = [ReleaseRow(model, v, gone, devices.get((model, v), 0)) for v, gone in versions]
        shown[model] = sorted(rows, key=lambda r: Version(r.version), reverse=True)
    return shown


def model_names(repository: ReleaseRepository) -> set[str]:
    """Every model with a release, listed or revoked."""
    return {*repository.index().models, *load_settings(repository.root).revoked}


def _previous(repository: ReleaseRepository, model: str, version: str) -> str | None:
    older = [v for v in repository.index().versions(model) if Version(v) < Version(version)]
    return max(older, key=Version, default=None)


def _distinct_chunks(manifest: ReleaseManifest) -> dict[str, int]:
    return {c.sha256: c.size for f in manifest.files for c in f.chunks}


def _metadata(repository: ReleaseRepository, now: datetime) -> MetadataStore:
    """The current metadata of each role, read as a client would find it on disk (read
    only: nothing here signs)."""
    store = MetadataStore(
        repository.root / METADATA_DIR, KeyStore(repository.keys_dir), Expiry(), lambda: now
    )
    store.load()
    return store


def signatures(store: MetadataStore, now: datetime) -> list[Signature]:
    root = store.root()
    found = []
    for role in ROLES:
        md = store.current(role)
        expires = md.signed.expires.astimezone(UTC)
        found.append(
            Signature(
                role=role,
                version=md.signed.version,
                expires=expires,
                expired=expires <= now,
                keyids=[keyid[:16] for keyid in md.signatures],
                threshold=root.roles[role].threshold,
                verified=store.verify(role, md) if role != "root" else _root_signed(md),
            )
        )
    return found


def _root_signed(md: Any) -> bool:
    try:
        md.signed.verify_delegate("root", md.signed_bytes, md.signatures)
    except Exception:  # python-tuf raises UnsignedMetadataError (and kin) when it fails
        return False
    return True


def release_detail(repository: ReleaseRepository, model: str, version: str) -> ReleaseDetail:
    """ReleaseNotFound for a release the signed metadata does not list."""
    manifest = repository.manifest(model, version)
    previous = _previous(repository, model, version)
    mine = _distinct_chunks(manifest)
    theirs = _distinct_chunks(repository.manifest(model, previous)) if previous else {}
    shared = {sha: size for sha, size in mine.items() if sha in theirs}
    now = datetime.now(UTC)
    store = _metadata(repository, now)
    found = signatures(store, now)
    targets = store.current("targets").signed
    assert isinstance(targets, Targets)
    target = targets.targets.get(manifest_target(model, version))
    return ReleaseDetail(
        manifest=manifest,
        total_bytes=sum(f.size for f in manifest.files),
        chunks=len(mine),
        chunk_bytes=sum(mine.values()),
        previous=previous,
        shared_chunks=len(shared),
        shared_bytes=sum(shared.values()),
        to_move_bytes=sum(mine.values()) - sum(shared.values()),
        target_sha256=target.hashes.get("sha256") if target else None,
        target_length=target.length if target else None,
        signatures=found,
    )

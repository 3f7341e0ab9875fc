"""Run an update end to end: check -> download -> verify -> install -> activate ->
health check -> commit, or roll back on any failure; resume after a crash.

Everything that decides whether a release may install happens before the first byte
is written: the signature chain (ngclient), the listing (not revoked), the version floor,
the failed-before list, free disk space and the file system's name limits.

No failure of this machinery stops inference: an OS error or a damaged store during an
install takes the table's FAILED edge (rolled back where something was activated), an
unreadable state file is moved aside, and the active version keeps serving.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from packaging.version import Version

from edge_agent import faults
from edge_agent.protocol import ReleaseManifest
from edge_agent.store import CorruptChunk, ModelStore, StoreError
from edge_agent.updates import capacity
from edge_agent.updates.adapter_base import check_adapter_base
from edge_agent.updates.errors import (
    HealthCheckFailed,
    InstallFailed,
    NoRoom,
    Refused,
    RepositoryError,
    StateDamaged,
)
from edge_agent.updates.health import check_model
from edge_agent.updates.machine import MAX_ATTEMPTS, Event, Phase, StateFile, UpdateRecord, advance
from edge_agent.updates.source import ReleaseSource

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (bytes done, bytes to fetch)
HealthCheck = Callable[[Path], None]

# What a write or activation can fail with that is the device's fault, not the release's.
DeviceFault = (OSError, StoreError)


@dataclass(frozen=True)
class Outcome:
    model: str
    version: str | None  # the version active afterwards
    changed: bool
    message: str
    fetched_bytes: int = 0
    reused_bytes: int = 0


class UpdateManager:
    def __init__(
        self,
        store: ModelStore,
        state_path: Path,
        *,
        health_check: HealthCheck = check_model,
    ) -> None:
        self.store = store
        self.state = StateFile(state_path)
        self.health_check = health_check
        self._on_phase: Callable[[Phase], None] | None = None

    # --- deciding ------------------------------------------------------------------------

    def choose(self, source: ReleaseSource, model: str, version: str | None = None) -> str | None:
        """The release to install, or None when the active one is the newest allowed."""
        source.refresh()
        wanted = version or source.index().latest(model)
        if wanted is None:
            raise Refused(f"the repository lists no release of {model}")
        active = self.store.active(model)
        if active is not None and active.version == wanted:
            return None
        self._check_allowed(model, wanted, self._load())
        return wanted

    def _check_allowed(self, model: str, version: str, record: UpdateRecord) -> None:
        floor = self.store.floor(model)
        if floor is not None and Version(version) < floor:
            raise Refused(
                f"{model} {version} is older than {floor}, the lowest version this device "
                "may run (rollback protection)"
            )
        active = self.store.active(model)
        if active is not None and Version(version) < Version(active.version):
            raise Refused(f"{model} {version} is older than the active {active.version}")
        if version in record.failed.get(model, []):
            raise Refused(
                f"{model} {version} failed its health check here before; "
                "it is refused until a newer release exists"
            )

    # --- running -------------------------------------------------------------------------

    def update(
        self,
        source: ReleaseSource,
        model: str,
        version: str | None = None,
        *,
        progress: Progress | None = None,
        on_phase: Callable[[Phase], None] | None = None,
    ) -> Outcome:
        """`on_phase` hears each phase the update enters (a progress display names it)."""
        self._on_phase = on_phase
        try:
            return self._update(source, model, version, progress)
        finally:
            self._on_phase = None

    def _update(
        self, source: ReleaseSource, model: str, version: str | None, progress: Progress | None
    ) -> Outcome:
        record = self._load()
        if record.phase is not Phase.IDLE:
            if record.model != model or (version and record.version != version):
                raise Refused(
                    f"an update of {record.model} to {record.version} is in progress "
                    f"({record.phase}); finish it first"
                )
            return self._resume(record, source, progress)
        wanted = self.choose(source, model, version)
        if wanted is None:
            active = self.store.active(model)
            return Outcome(model, active.version if active else None, False, "already newest")
        manifest = source.manifest(model, wanted)  # listed and verified by ngclient
        check_adapter_base(self.store, manifest)  # an adapter needs its base active here
        self._check_room(manifest, download=True)  # before the state file says "started"
        active = self.store.active(model)
        record = record.model_copy(
            update={
                "model": model,
                "version": wanted,
                "from_version": active.version if active else None,
                "attempts": 0,
                "last_error": None,
                "manifest": manifest.model_dump_json(),
                "history": [],
            }
        )
        record = self._save(advance(record, Event.START))
        return self._resume(record, source, progress)

    def recover(self) -> Outcome | None:
        """After a restart: finish or undo an interrupted update without the network.

        A download waits for the next `update`; every later phase completes here. An
        unreadable state file is moved aside (StateDamaged says where) and nothing resumes.
        """
        try:
            record = self.state.load()
        except StateDamaged as exc:
            raise StateDamaged(f"{exc}; {self._quarantine()}") from exc
        if record.phase in (Phase.IDLE, Phase.DOWNLOADING):
            return None
        return self._resume(record, None, None)

    def _resume(
        self, record: UpdateRecord, source: ReleaseSource | None, progress: Progress | None
    ) -> Outcome:
        assert record.manifest is not None
        manifest = ReleaseManifest.model_validate_json(record.manifest)
        try:
            return self._run_phases(record, manifest, source, progress)
        except OSError as exc:
            # Not even the state could be saved (a disk with no room at all): the record
            # keeps the last phase it reached, which resumes like after a power cut.
            raise InstallFailed(self._not_written(manifest, exc)) from exc

    def _run_phases(
        self,
        record: UpdateRecord,
        manifest: ReleaseManifest,
        source: ReleaseSource | None,
        progress: Progress | None,
    ) -> Outcome:
        fetched = reused = 0
        if record.phase is Phase.DOWNLOADING:
            if source is None:
                raise RepositoryError("the download needs the repository")
            try:
                self._check_room(manifest, download=True)
                fetched, reused = self._download(source, manifest, progress)
            except Exception as exc:
                self._save(advance(record, Event.FAILED, error=str(exc)))
                if isinstance(exc, OSError):  # what arrived is kept for the next try
                    raise InstallFailed(self._not_written(manifest, exc)) from exc
                raise
            record = self._save(advance(record, Event.DOWNLOADED))
        if record.phase is Phase.INSTALLING:
            try:
                self._check_room(manifest, download=False)
                self.store.assemble(manifest)
            except CorruptChunk as exc:
                # The store dropped the damaged chunk; the good ones stay for the next try.
                self._tidy(keep=manifest)
                self._save(advance(record, Event.FAILED, error=str(exc)))
                raise RepositoryError(f"install of {manifest.version} stopped: {exc}") from exc
            except (NoRoom, *DeviceFault) as exc:
                self._tidy(keep=manifest)
                self._save(advance(record, Event.FAILED, error=str(exc)))
                if isinstance(exc, NoRoom):
                    raise
                raise InstallFailed(self._not_written(manifest, exc)) from exc
            faults.checkpoint("installed")
            record = self._save(advance(record, Event.INSTALLED))
        if record.phase is Phase.ACTIVATING:
            try:
                self.store.activate(manifest.model, manifest.version)
            except DeviceFault as exc:
                log.error("activating %s %s failed: %s", manifest.model, manifest.version, exc)
                record = self._save(
                    advance(record, Event.FAILED, error=f"activation failed: {exc}")
                )
            else:
                faults.checkpoint("activated")
                record = self._save(advance(record, Event.ACTIVATED))
        if record.phase is Phase.HEALTH_CHECK:
            record = self._health_check(record, manifest)
        if record.phase is Phase.ROLLING_BACK:
            return self._roll_back(record)
        return Outcome(manifest.model, manifest.version, True, "installed", fetched, reused)

    def _check_room(self, manifest: ReleaseManifest, *, download: bool) -> None:
        """Refuse, before writing, a release this device has no room or no names for."""
        assembled = sum(entry.size for entry in manifest.files)
        if download:
            version_folder = self.store.models_dir / manifest.model / "versions"
            capacity.check_names(version_folder / manifest.version, manifest)
            to_fetch = sum(self.store.missing_chunks(manifest).values())
            what = f"download and install {manifest.model} {manifest.version}"
            capacity.check_space(self.store.root, to_fetch + assembled, what)
        else:
            what = f"install {manifest.model} {manifest.version}"
            capacity.check_space(self.store.root, assembled, what)

    def _not_written(self, manifest: ReleaseManifest, exc: BaseException) -> str:
        active = self.store.active(manifest.model)
        kept = f"{active.version} stays active" if active else "nothing was activated"
        return (
            f"{manifest.model} {manifest.version} could not be installed on this device "
            f"({exc}); {kept}. Fix the cause (disk space, file system) and update again"
        )

    def _tidy(self, keep: ReleaseManifest) -> None:
        """Remove staging leftovers; keep what the release's next try can reuse."""
        try:
            self.store.gc(keep=[keep])
        except DeviceFault as exc:  # tidying is best effort; the next gc tries again
            log.warning("cleaning up after the failed install: %s", exc)

    def _download(
        self, source: ReleaseSource, manifest: ReleaseManifest, progress: Progress | None
    ) -> tuple[int, int]:
        missing = self.store.missing_chunks(manifest)
        total = sum(missing.values())
        reused = sum(manifest.unique_chunks().values()) - total
        done = 0
        for sha, size in sorted(missing.items()):
            try:  # the source checks the hash too, passing over peers that send wrong bytes
                self.store.put_chunk(sha, source.chunk(sha, size))
            except CorruptChunk as exc:
                raise RepositoryError(
                    f"a chunk of {manifest.model} {manifest.version} does not match the "
                    f"signed manifest ({exc}); nothing was installed"
                ) from exc
            faults.checkpoint("chunk-stored")
            done += size
            if progress is not None:
                progress(done, total)
        return total, reused

    def _health_check(self, record: UpdateRecord, manifest: ReleaseManifest) -> UpdateRecord:
        record = self._save(record.model_copy(update={"attempts": record.attempts + 1}))
        if record.attempts > MAX_ATTEMPTS:
            message = f"the health check was interrupted {MAX_ATTEMPTS} times"
            return self._save(advance(record, Event.FAILED, error=message))
        try:
            installed = self.store.version(manifest.model, manifest.version)
            self.health_check(installed.path)
        except (HealthCheckFailed, *DeviceFault) as exc:
            log.error("%s", exc)
            return self._save(advance(record, Event.FAILED, error=str(exc)))
        faults.checkpoint("healthy")
        self.store.raise_floor(manifest.model, manifest.version)
        record = self._save(advance(record, Event.HEALTHY))
        self.store.gc()
        log.info("%s %s is active and healthy", manifest.model, manifest.version)
        return record

    def _roll_back(self, record: UpdateRecord) -> Outcome:
        model, bad = record.model, record.version
        self.store.restore(model, record.from_version)
        failed = record.failed
        unhealthy = any(step.startswith(f"{Phase.HEALTH_CHECK}-") for step in record.history)
        if unhealthy:  # the release itself is at fault: refuse it until a newer one exists
            failed = {**failed, model: sorted({*failed.get(model, []), bad})}
        record = self._save(
            advance(record.model_copy(update={"failed": failed}), Event.ROLLED_BACK)
        )
        self._tidy_all()
        reason = record.last_error or "unknown"
        log.error("rolled %s back to %s: %s", model, record.from_version, reason)
        message = f"{model} {bad} failed ({reason}); rolled back to {record.from_version}"
        raise HealthCheckFailed(message) if unhealthy else InstallFailed(message)

    def rollback(self, model: str) -> str:
        """An operator's rollback to the previous version."""
        record = self._load()
        if record.phase is not Phase.IDLE:
            raise Refused(f"an update is in progress ({record.phase}); let it finish first")
        return self.store.rollback(model)

    def _tidy_all(self) -> None:
        try:
            self.store.gc()
        except DeviceFault as exc:
            log.warning("cleaning up after the rollback: %s", exc)

    def _load(self) -> UpdateRecord:
        """The update record; an unreadable one is moved aside and the machine restarts
        from IDLE (the store's pointers and floors are not in it)."""
        try:
            return self.state.load()
        except StateDamaged as exc:
            log.error("%s; %s", exc, self._quarantine())
            return UpdateRecord()

    def _quarantine(self) -> str:
        aside = self.state.quarantine()
        return (
            f"moved aside to {aside}; the update machine starts afresh and the active "
            "version keeps serving"
        )

    def _save(self, record: UpdateRecord) -> UpdateRecord:
        self.state.save(record)
        if self._on_phase is not None:
            self._on_phase(record.phase)
        return record

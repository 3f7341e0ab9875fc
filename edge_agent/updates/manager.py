"""Run an update end to end: check -> download -> verify -> install -> activate ->
health check -> commit, or roll back on any failure; resume after a crash.

Everything that decides whether a release may install happens before the first byte
is written: the signature chain (ngclient), the listing (not revoked), the version floor,
the failed-before list.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from packaging.version import Version

from edge_agent import faults
from edge_agent.protocol import ReleaseManifest
from edge_agent.store import CorruptChunk, ModelStore
from edge_agent.updates.errors import HealthCheckFailed, Refused, RepositoryError
from edge_agent.updates.health import check_model
from edge_agent.updates.machine import MAX_ATTEMPTS, Event, Phase, StateFile, UpdateRecord, advance
from edge_agent.updates.source import ReleaseSource

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (bytes done, bytes to fetch)
HealthCheck = Callable[[Path], None]


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
        self._check_allowed(model, wanted, self.state.load())
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
    ) -> Outcome:
        record = self.state.load()
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

        A download waits for the next `update`; every later phase completes here.
        """
        record = self.state.load()
        if record.phase in (Phase.IDLE, Phase.DOWNLOADING):
            return None
        return self._resume(record, None, None)

    def _resume(
        self, record: UpdateRecord, source: ReleaseSource | None, progress: Progress | None
    ) -> Outcome:
        assert record.manifest is not None
        manifest = ReleaseManifest.model_validate_json(record.manifest)
        fetched = reused = 0
        if record.phase is Phase.DOWNLOADING:
            if source is None:
                raise RepositoryError("the download needs the repository")
            try:
                fetched, reused = self._download(source, manifest, progress)
            except Exception as exc:
                self._save(advance(record, Event.FAILED, error=str(exc)))
                raise
            record = self._save(advance(record, Event.DOWNLOADED))
        if record.phase is Phase.INSTALLING:
            try:
                self.store.assemble(manifest)
            except CorruptChunk as exc:
                self.store.gc()  # drop the damaged chunks; the next try fetches them again
                self._save(advance(record, Event.FAILED, error=str(exc)))
                raise RepositoryError(f"install of {manifest.version} stopped: {exc}") from exc
            faults.checkpoint("installed")
            record = self._save(advance(record, Event.INSTALLED))
        if record.phase is Phase.ACTIVATING:
            self.store.activate(manifest.model, manifest.version)
            faults.checkpoint("activated")
            record = self._save(advance(record, Event.ACTIVATED))
        if record.phase is Phase.HEALTH_CHECK:
            record = self._health_check(record, manifest)
        if record.phase is Phase.ROLLING_BACK:
            return self._roll_back(record)
        return Outcome(manifest.model, manifest.version, True, "installed", fetched, reused)

    def _download(
        self, source: ReleaseSource, manifest: ReleaseManifest, progress: Progress | None
    ) -> tuple[int, int]:
        missing = self.store.missing_chunks(manifest)
        total = sum(missing.values())
        reused = sum(manifest.unique_chunks().values()) - total
        done = 0
        for sha, size in sorted(missing.items()):
            data = source.chunk(sha, size)
            try:
                self.store.put_chunk(sha, data)
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
        installed = self.store.version(manifest.model, manifest.version)
        try:
            self.health_check(installed.path)
        except HealthCheckFailed as exc:
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
        failed = {**record.failed, model: sorted({*record.failed.get(model, []), bad})}
        record = self._save(
            advance(record.model_copy(update={"failed": failed}), Event.ROLLED_BACK)
        )
        self.store.gc()
        reason = record.last_error or "unknown"
        log.error("rolled %s back to %s: %s", model, record.from_version, reason)
        raise HealthCheckFailed(
            f"{model} {bad} failed ({reason}); rolled back to {record.from_version}"
        )

    def rollback(self, model: str) -> str:
        """An operator's rollback to the previous version."""
        record = self.state.load()
        if record.phase is not Phase.IDLE:
            raise Refused(f"an update is in progress ({record.phase}); let it finish first")
        return self.store.rollback(model)

    def _save(self, record: UpdateRecord) -> UpdateRecord:
        self.state.save(record)
        return record

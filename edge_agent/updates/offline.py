"""`edge-agent import PATH`: install from a USB bundle with the online path's guarantees.

1. Read only authorisation.json from the stick (capped), check it is signed by the
   offline-bundle role that this device's trusted root names, names this device, and is
   within its validity by this device's clock, and not before the newest authorisation
   this device accepted (a clock set back cannot revive an expired stick).
2. Copy the files it lists into a private staging folder, each checked by size and sha256
   (edge_agent.updates.stick); the stick is not read again.
3. Verify the signed desired state the stick carries for this device, if any
   (edge_agent.updates.stick_desired): only the releases it names install, and only
   inside its maintenance window.
4. Verify the TUF metadata in staging with python-tuf, as of the authorisation's
   `issued_at` (the hub saw it fresh then; the timestamp is pinned by hash), and install
   each named release through the same UpdateManager as online updates: version floors,
   the active version and the failed list still refuse an older or bad release.

Nothing is installed before every check passed; the active version keeps serving
throughout, and staging is removed afterwards whatever happened.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError
from tuf.api.metadata import Metadata, Root

from edge_agent import faults
from edge_agent.atomic import write_atomic
from edge_agent.protocol.bundle import (
    AUTHORISATION_FILE,
    BUNDLE_DIR,
    MAX_AUTHORISATION_BYTES,
    RECEIPTS_DIR,
    REPOSITORY_DIR,
    Authorisation,
    AuthorisationRefused,
    BundleFile,
    BundleRelease,
    Receipt,
    offline_role,
    verify_authorisation,
)
from edge_agent.telemetry.stick_tokens import leave_answers
from edge_agent.updates import capacity
from edge_agent.updates.errors import NotTrusted, Refused, UpdateError
from edge_agent.updates.fetchers import FolderFetcher
from edge_agent.updates.manager import Outcome, Progress, UpdateManager
from edge_agent.updates.site_peers import record_site_peers
from edge_agent.updates.source import ROOT_FILE, ReleaseSource
from edge_agent.updates.stick import StickRefused, copy_verified, read_capped
from edge_agent.updates.stick_desired import desired_on_stick, plan, verify_on_stick

STAGING_DIR = "import-staging"
TIME_FLOOR_FILE = "offline-time.json"
COPY_THREADS = 3


@dataclass
class ImportReport:
    authorisation: Authorisation
    outcomes: list[Outcome] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # model, version, why
    # Messages of this device that the hub has stored (from an earlier export): the
    # caller drops them from the outbox.
    receipt_ids: list[str] = field(default_factory=list)
    # What the desired state on the stick held back (edge_agent.updates.stick_desired).
    notes: list[str] = field(default_factory=list)
    window_closed: bool = False  # its maintenance window is closed: nothing was installed
    window_opens: datetime | None = None


def _trusted_root(trust_dir: Path) -> Root:
    try:
        return Metadata[Root].from_file(str(trust_dir / ROOT_FILE)).signed
    except FileNotFoundError:
        raise NotTrusted(
            f"no trusted root in {trust_dir}: pin the fleet's root.json first "
            "(edge-agent trust PATH)"
        ) from None


def time_floor(data_dir: Path) -> datetime | None:
    try:
        return datetime.fromisoformat(json.loads((data_dir / TIME_FLOOR_FILE).read_text())["at"])
    except (FileNotFoundError, KeyError, ValueError):
        return None


def _raise_time_floor(data_dir: Path, at: datetime) -> None:
    floor = time_floor(data_dir)
    if floor is None or at > floor:
        write_atomic(data_dir / TIME_FLOOR_FILE, json.dumps({"at": at.isoformat()}).encode())


def check_authorisation(
    stick: Path, trust_dir: Path, data_dir: Path, device_id: str, now: datetime
) -> Authorisation:
    """Steps 1: the verified authorisation, or Refused saying why."""
    role_root = _trusted_root(trust_dir)
    bundle = stick / BUNDLE_DIR
    try:
        data = read_capped(bundle, AUTHORISATION_FILE, MAX_AUTHORISATION_BYTES)
        authorisation = verify_authorisation(data, offline_role(role_root.to_dict()))
    except AuthorisationRefused as exc:
        raise Refused(str(exc)) from None
    floor = time_floor(data_dir)
    if now >= authorisation.expires:
        raise Refused(
            f"the bundle's authorisation expired at {authorisation.expires:%Y-%m-%d %H:%M} UTC "
            f"(this device's clock says {now:%Y-%m-%d %H:%M}); ask the hub for a new stick"
        )
    if floor is not None and floor >= authorisation.expires:
        raise Refused(
            f"the bundle's authorisation expired at {authorisation.expires:%Y-%m-%d} UTC, "
            f"before a bundle this device already accepted (issued {floor:%Y-%m-%d}); "
            "this device's clock is wrong or the stick is old: ask for a new stick"
        )
    if device_id not in authorisation.devices:
        raise Refused(
            f"the bundle is for site {authorisation.site!r} and does not name this device "
            f"({device_id}); nothing was copied or installed"
        )
    return authorisation


def import_bundle(
    stick: Path,
    manager: UpdateManager,
    *,
    trust_dir: Path,
    data_dir: Path,
    device_id: str,
    now: datetime | None = None,
    progress: Progress | None = None,
) -> ImportReport:
    now = now or datetime.now(UTC)
    authorisation = check_authorisation(stick, trust_dir, data_dir, device_id, now)
    staging = data_dir / STAGING_DIR
    shutil.rmtree(staging, ignore_errors=True)  # a crashed import's leftovers
    staging.mkdir(mode=0o700, parents=True)
    try:
        _copy_to_staging(stick / BUNDLE_DIR / REPOSITORY_DIR, staging, authorisation, progress)
        _raise_time_floor(data_dir, authorisation.issued_at)
        signed = desired_on_stick(staging, device_id)
        state = verify_on_stick(signed, data_dir, device_id, authorisation) if signed else None
        allowed = plan(authorisation, state, now)
        report = _install(staging, manager, trust_dir, authorisation, allowed.releases)
        report.notes = allowed.skipped
        report.window_opens = allowed.waiting_until
        report.window_closed = allowed.window_closed
        record_site_peers(data_dir, authorisation)  # a stick refused above names none
        receipt = _receipt(staging, device_id)
        if receipt is not None:
            report.receipt_ids = receipt.message_ids
            # The hub's answers to this device's token requests: the service finalizes them.
            leave_answers(data_dir / "telemetry", receipt.tokens)
        return report
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _copy_to_staging(
    source: Path, staging: Path, authorisation: Authorisation, progress: Progress | None
) -> None:
    total = authorisation.total_bytes()
    capacity.check_space(staging, total, "copy the USB bundle to staging")
    done = 0
    lock = threading.Lock()

    def step(size: int) -> None:
        nonlocal done
        with lock:
            done += size
            if progress is not None:
                progress(done, total)

    def copy(entry: BundleFile) -> None:
        copy_verified(source, entry.path, staging, entry.size, entry.sha256, step)
        faults.checkpoint("staged-file")

    # Files are hashed while copied; a few at once keep a USB 3 stick busy while one is
    # hashed (sha256 releases the GIL). The first refusal stops the rest.
    with ThreadPoolExecutor(max_workers=COPY_THREADS) as pool:
        futures = [pool.submit(copy, entry) for entry in authorisation.files]
        try:
            for future in as_completed(futures):
                future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    timestamp = staging / "metadata" / "timestamp.json"
    if (
        not timestamp.is_file()
        or hashlib.sha256(timestamp.read_bytes()).hexdigest() != authorisation.timestamp_sha256
    ):
        raise StickRefused(
            "the bundle's TUF timestamp is not the one its authorisation vouches for"
        )


def _receipt(staging: Path, device_id: str) -> Receipt | None:
    path = staging / RECEIPTS_DIR / f"{device_id}.json"
    if not path.is_file():
        return None
    try:
        receipt = Receipt.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        raise StickRefused(f"the bundle's receipt for this device is malformed: {exc}") from None
    if receipt.device_id != device_id:
        raise StickRefused("the bundle's receipt names another device")
    return receipt


def _install(
    staging: Path,
    manager: UpdateManager,
    trust_dir: Path,
    authorisation: Authorisation,
    releases: list[BundleRelease],
) -> ImportReport:
    report = ImportReport(authorisation)
    source = ReleaseSource(staging.as_uri() + "/", trust_dir, FolderFetcher())
    # Expiry is judged as of when the hub issued the bundle (and saw this metadata fresh);
    # ngclient has no public option for it, its trusted set reads this attribute at every
    # expiry check (tests/updates/test_airgap_import.py fails if that ever changes).
    source._updater._trusted_set.reference_time = authorisation.issued_at
    with source:
        for release in releases:
            try:
                report.outcomes.append(manager.update(source, release.model, release.version))
            except UpdateError as exc:
                report.errors.append(f"{release.model} {release.version}: {exc}")
                report.failures.append((release.model, release.version, str(exc)))
    return report

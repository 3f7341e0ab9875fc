"""The agent's side of fleet sync, assembled from its config and its enrollment.

`sync_settings(config)` merges the `[sync]` and `[updates]` sections with what `edge-agent
enroll` brought (explicit config wins), and is None when the device is not part of a
fleet. `SyncService` then runs, inside `edge-agent serve`:

    outbox     the durable queue every report goes through
    link       MQTT to the hub: publishes the outbox, receives signed desired state
    applier    verified desired state -> UpdateManager (TUF-verified, version floor, health
               check, rollback) -> install events and reported state
    jobs       heartbeat, outbox flush, update check (retries a desired release that did not
               install for a passing reason, e.g. the hub was unreachable), housekeeping
               (the model store's garbage collection)
    window     a desired state with a maintenance window: outside it the release is only
               downloaded (edge_agent.sync.window); a one-off job at the window's opening
               installs it. The waiting state is kept in a file, so a restart keeps waiting.
    agent      the release `edge-agent` (the agent itself) goes to edge_agent.installed.fleet:
               installed into the other slot and switched to inside the window, unless the
               device's user pinned or deferred it (reported as `held`); a trial's result is
               reported by whichever agent runs after it.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime

from apscheduler.schedulers.background import BackgroundScheduler
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_agent.config import AgentConfig
from edge_agent.installed.fleet import AGENT_RELEASE, AgentSelfUpdate
from edge_agent.protocol import DesiredState, Envelope, ModelReport, ReportedState
from edge_agent.protocol.telemetry import UpdateOutcome
from edge_agent.store import ModelStore
from edge_agent.sync.jobs import JobIntervals, build_scheduler, heartbeat_job
from edge_agent.sync.link import Link, enqueue
from edge_agent.sync.orchestrate import ActivatesElsewhere, DesiredApplier, HeldBack
from edge_agent.sync.outbox import Outbox
from edge_agent.sync.settings import OUTBOX_FILE, SyncSettings
from edge_agent.sync.state import load_director_keys
from edge_agent.sync.window import HeldDesired, WaitingForWindow, prefetch
from edge_agent.telemetry.collector import Collector
from edge_agent.updates.errors import UpdateError
from edge_agent.updates.manager import UpdateManager
from edge_agent.updates.reactivate import reactivate_kept
from edge_agent.updates.rollback import is_rollback

log = logging.getLogger(__name__)

WINDOW_JOB = "maintenance-window"
AGENT_TRIAL_JOB = "agent-trial-result"
AGENT_TRIAL_CHECK_SECONDS = 5


class SyncService:
    def __init__(self, config: AgentConfig, settings: SyncSettings, agent_version: str) -> None:
        self.config = config
        self.settings = settings
        self.agent_version = agent_version
        self.store = ModelStore(config.data_dir)
        self.manager = UpdateManager(self.store, config.update_state_path)
        sync = config.sync
        self.outbox = Outbox(
            config.sync_dir / OUTBOX_FILE,
            max_messages=sync.outbox_max_messages,
            max_bytes=sync.outbox_max_bytes,
        )
        self.collector: Collector | None = None  # telemetry: update outcomes by release
        self._install_lock = threading.Lock()  # desired state and the retry job, one at a time
        self._last_desired: DesiredState | None = None
        self._held = HeldDesired(config.sync_dir)
        self.link = Link(
            self.outbox,
            device_id=settings.device_id,
            broker=settings.broker,
            state_dir=config.sync_dir,
            trusted_keys=self._director_keys(),
            on_desired=self._on_desired,
            tls=settings.tls,
            keepalive_s=sync.keepalive_seconds,
            session_expiry_s=sync.session_expiry_seconds,
            reconnect_min_s=sync.reconnect_min_seconds,
            reconnect_max_s=sync.reconnect_max_seconds,
            max_in_flight=sync.max_in_flight_messages,
        )
        self.agent = AgentSelfUpdate(
            config.data_dir, config.sync_dir, agent_version, online=lambda: self.link.connected
        )
        self.applier = DesiredApplier(
            self.outbox,
            settings.device_id,
            agent_version,
            active_version=self._active_version,
            install=self._install,
            nudge=self.link.flush,
            describe=self.describe,
            held=lambda model, version: (
                self.agent.blocked(version) if model == AGENT_RELEASE else None
            ),
        )
        self.scheduler: BackgroundScheduler = build_scheduler(
            JobIntervals(
                heartbeat_seconds=sync.heartbeat_interval_seconds,
                flush_seconds=sync.flush_interval_seconds,
                update_check_seconds=sync.update_check_interval_seconds,
                housekeeping_seconds=sync.housekeeping_interval_seconds,
            ),
            heartbeat=heartbeat_job(self.outbox, settings.device_id, nudge=self.link.flush),
            flush=self.link.flush,
            update_check=self.retry_desired,
            housekeeping=self._housekeeping,
        )
        if self.agent.root is not None:  # under the launcher: a fallback leaves us running
            self.scheduler.add_job(
                self.report_agent_trial, "interval", seconds=AGENT_TRIAL_CHECK_SECONDS,
                id=AGENT_TRIAL_JOB,
            )  # fmt: skip

    def _director_keys(self) -> dict[str, Ed25519PublicKey]:
        path = self.settings.director_keys
        if path is None:
            log.warning(
                "no director keys: desired state from the hub will be refused; enroll the "
                "device or set [sync] director_keys_file"
            )
            return {}
        return load_director_keys(path)

    def start(self) -> None:
        self.link.start()
        self.report_agent_trial()
        self.report()
        self.scheduler.start()
        held = self._held.load(self.link.sequences.load(), datetime.now(UTC))
        if held is not None:  # accepted before a restart, still waiting for its window
            log.info("desired state %d waits for its maintenance window", held.sequence)
            with self._install_lock:
                self._last_desired = held
            self._activate_at_window(held)

    def stop(self) -> None:
        self.scheduler.shutdown(wait=False)
        self.link.stop()
        self.outbox.close()

    # --- reports -------------------------------------------------------------------------

    def describe(self, model: str) -> ModelReport:
        if model == AGENT_RELEASE:
            return self.agent.report()
        active, previous = self.store.active(model), self.store.previous(model)
        floor = self.store.floor(model)
        return ModelReport(
            active=active.version if active else None,
            previous=previous.version if previous else None,
            floor=str(floor) if floor else None,
        )

    def report(self) -> None:
        """Queue what runs now (at start, so the hub sees the device's state at once)."""
        if self.agent.superseded():
            return
        models = {model: self.describe(model) for model in self.store.models()}
        if self.agent.root is not None:  # installed with slots: the agent is a release too
            models[AGENT_RELEASE] = self.agent.report()
        state = ReportedState(
            agent_version=self.agent_version,
            models=models,
            desired_sequence=self.link.sequences.load(),
        )
        enqueue(self.outbox, Envelope.of(state, device_id=self.settings.device_id))
        self.link.flush()

    def report_agent_trial(self) -> None:
        """The result of the last agent switch (committed, or fallen back and why), once."""
        if self.agent.superseded():
            return
        event = self.agent.unreported_result()
        if event is None:
            return
        enqueue(self.outbox, Envelope.of(event, device_id=self.settings.device_id))
        self.agent.mark_reported()
        self.report()

    # --- desired state -------------------------------------------------------------------

    def _active_version(self, model: str) -> str | None:
        if model == AGENT_RELEASE:
            return self.agent.active_version()
        active = self.store.active(model)
        return active.version if active else None

    def _on_desired(self, state: DesiredState) -> None:
        with self._install_lock:
            self._last_desired = state
            if state.window is None:
                self._held.clear()
            else:
                self._held.save(state)
            self.applier(state)
            self._activate_at_window(state)

    def _activate_at_window(self, state: DesiredState) -> None:
        """A one-off job that installs what waits when the window next opens."""
        window = state.window
        if window is None or not self._waiting(state):
            return
        opens = window.next_open(datetime.now(UTC))
        if opens is None:
            log.error("desired state %d: its maintenance window never opens", state.sequence)
            return
        self.scheduler.add_job(
            self.retry_desired, "date", run_date=opens, id=WINDOW_JOB, replace_existing=True
        )
        log.info("activation of desired state %d at %s", state.sequence, opens.isoformat())

    def _waiting(self, state: DesiredState) -> bool:
        return any(
            self._active_version(model) != release.version
            for model, release in state.models.items()
        )

    def _install(self, model: str, version: str) -> str | None:
        """Install `version` through TUF (it must be listed by the signed targets), above
        the version floor, health-checked; UpdateError says why not."""
        from edge_agent.updates.fetchers import fetcher_for
        from edge_agent.updates.peer_setup import configured_peers
        from edge_agent.updates.source import ReleaseSource

        source = self.settings.update_source
        if not source:
            raise UpdateError("no update source: enroll the device or set [updates] source")
        window = self._last_desired.window if self._last_desired is not None else None
        now = datetime.now(UTC)
        base, fetcher = fetcher_for(
            source,
            self.settings.update_token,
            self.config.updates.bandwidth_bytes_per_second,
            ca_file=self.settings.update_ca,
        )
        # Below the floor or the active version: only the kept one, re-activated, no fetch.
        kept = self.store.active(model)  # the agent's own release is not in the store
        if is_rollback(version, self.store.floor(model), kept.version if kept else None):
            if window is not None and not window.is_open(now):
                raise WaitingForWindow(model, version, window.next_open(now))
            rollbacks = self._last_desired.rollbacks if self._last_desired is not None else {}
            with ReleaseSource(base, self.config.trust_dir, fetcher) as releases:
                return reactivate_kept(
                    self.manager, releases, model, version, rolled_back_from=rollbacks.get(model)
                ).version
        try:
            peers = configured_peers(self.config)  # LAN peers first, verified as always
            with ReleaseSource(base, self.config.trust_dir, fetcher, peers=peers) as releases:
                if window is not None and not window.is_open(now):
                    if model != AGENT_RELEASE:
                        prefetch(self.manager, releases, model, version)
                    raise WaitingForWindow(model, version, window.next_open(now))
                if model == AGENT_RELEASE:
                    self.agent.install(releases, version)  # raises: held, failed or switching
                outcome = self.manager.update(releases, model, version)
        except (WaitingForWindow, HeldBack, ActivatesElsewhere):
            raise
        except Exception:
            self._count_outcome(model, version, UpdateOutcome.FAILED)
            raise
        if outcome.version != version:  # unhealthy: the previous version runs again
            self._count_outcome(model, version, UpdateOutcome.ROLLED_BACK)
            raise UpdateError(f"{model} {version} was not installed: {outcome.message}")
        self._count_outcome(model, version, UpdateOutcome.SUCCEEDED)
        return outcome.version

    def _count_outcome(self, model: str, version: str, outcome: UpdateOutcome) -> None:
        if self.collector is not None:
            self.collector.record_update_outcome(model, version, outcome)

    def retry_desired(self) -> None:
        """The update-check job: install again what the last desired state asks for and is
        not active, unless that release already failed its health check here."""
        with self._install_lock:
            state = self._last_desired
            if state is None:
                return
            if state.window is not None and not state.window.is_open(datetime.now(UTC)):
                return  # downloaded already; the window's own job installs it
            failed = self.manager.state.load().failed
            due = {
                model: release
                for model, release in state.models.items()
                if self._active_version(model) != release.version
                and release.version not in failed.get(model, [])
                and not self._agent_rests(model, release.version)
            }
            if due:
                log.info("retrying the desired releases: %s", ", ".join(sorted(due)))
                self.applier(state.model_copy(update={"models": due}))

    def _agent_rests(self, model: str, version: str) -> bool:
        """The agent release is not retried while held, on trial or failed here."""
        if model != AGENT_RELEASE:
            return False
        return self.agent.settled(version) or self.agent.blocked(version) is not None

    def _housekeeping(self) -> None:
        report = self.store.gc()
        log.info("housekeeping: %s", report)

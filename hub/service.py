"""A running hub: the broker, the ingest worker, the desired-state publisher and the timed
jobs, started in order and stopped in reverse. `edge-hub serve` runs this beside the HTTP
server (artifacts and enrollment).

    broker           Mosquitto as a child process (managed), or the configured external one
    ingest           one worker: reports into the database (plain subscriptions on the
                     managed Mosquitto, shared ones on an external broker)
    publisher        signed desired state, retained, on each device's topic
    desired rounds   desired state renewed and published every few seconds, and at once
                     when the rollout driver has signed a chunk (hub.fleet.publish_loop)
    jobs             metadata refresh; rollouts driven a step (hub.rollouts.driver); the fleet
                     watched: a revocation (a newly revoked certificate) makes the broker cut
                     off the device's open connection too, and new group membership rewrites
                     the broker's ACL

Commands in other processes (`edge-hub device revoke`, `group add`) change the files and
the database only; the jobs here carry the change to the broker within seconds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import Engine

from edge_agent.mqtt import BrokerAddress
from edge_agent.protocol.topics import (
    HUB_DIRECTOR_CLIENT,
    HUB_INGEST_CLIENT,
    HUB_INGEST_FILTERS,
    HUB_INGEST_TOPICS,
)
from edge_agent.scheduling import new_scheduler
from hub import db
from hub.broker import ChildBroker, managed_broker
from hub.config import HubConfig
from hub.fleet import desired, registry
from hub.fleet.authority import FleetAuthority
from hub.fleet.publish_loop import PublishLoop
from hub.fleet.publisher import DesiredPublisher
from hub.ingest.consumer import IngestConsumer, IngestSettings, writer_processes_for
from hub.registry.repository import ReleaseRepository
from hub.rollouts.jobs import add_rollout_job, make_driver
from hub.scheduler import add_refresh_job, add_rollup_job
from hub.telemetry.keys import PeriodKeys, load_or_create_seed, seed_file

log = logging.getLogger(__name__)

FLEET_JOB_SECONDS = 2.0
CONNECT_TIMEOUT_S = 15.0


@dataclass
class HubService:
    config: HubConfig
    repository: ReleaseRepository
    engine: Engine = field(init=False)
    authority: FleetAuthority = field(init=False)
    broker: ChildBroker | None = field(default=None, init=False)
    ingest: IngestConsumer | None = field(default=None, init=False)
    publisher: DesiredPublisher | None = field(default=None, init=False)
    desired_rounds: PublishLoop | None = field(default=None, init=False)
    scheduler: BackgroundScheduler | None = field(default=None, init=False)
    token_seed_file: Path = field(init=False)
    token_keys: PeriodKeys = field(init=False)
    _revoked: list[int] = field(default_factory=list, init=False)
    _groups: dict[str, list[str]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.engine = db.make_engine(self.config.database_url)
        self.authority = FleetAuthority(self.config)
        self.token_seed_file = seed_file(self.config.identity_dir)
        # Made now: the ingest's writer processes and the token issuer read the same seed.
        self.token_keys = PeriodKeys(load_or_create_seed(self.token_seed_file))

    def start(self) -> None:
        """Start every part; on any failure what was started is stopped again."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        db.migrate(self.engine)
        self.authority.director.private_key()  # made now, not at the first enrollment
        ca = self.authority.ca
        address = BrokerAddress.parse(self.config.broker.hub_url)
        if self.config.broker.mode != "external":
            self._groups = self._device_groups()
            self.broker = managed_broker(self.config, ca, self._groups)
            self.broker.start()
            self._revoked = ca.revoked_serials()
        # Each hub client connects with its own certificate, whose CN is its client id.
        tls = ca.hub_client_files(HUB_INGEST_CLIENT).client()
        self.ingest = IngestConsumer(
            self.engine,
            IngestSettings(
                host=address.host,
                port=address.port,
                client_id=HUB_INGEST_CLIENT,
                tls=tls if address.tls else None,
                # Plain subscriptions on the managed Mosquitto: it lets any device join a
                # `$share` group and swallow that group's messages (hub.broker.mosquitto).
                filters=HUB_INGEST_TOPICS if self.broker is not None else HUB_INGEST_FILTERS,
                writer="process",
                writer_processes=writer_processes_for(self.config.database_url),
                token_seed_file=self.token_seed_file,
            ),
        )
        self.ingest.start(CONNECT_TIMEOUT_S)
        director_tls = ca.hub_client_files(HUB_DIRECTOR_CLIENT).client()
        self.publisher = DesiredPublisher(address, director_tls, HUB_DIRECTOR_CLIENT)
        self.publisher.start()
        if not self.publisher.wait_connected(CONNECT_TIMEOUT_S):
            log.warning("the desired-state publisher is not connected yet; it keeps trying")
        self.desired_rounds = PublishLoop(self.desired_round, FLEET_JOB_SECONDS)
        self.desired_rounds.start()
        self.scheduler = self._jobs(self.desired_rounds.wake)
        self.scheduler.start()

    def stop(self) -> None:
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=True)
            self.scheduler = None
        if self.desired_rounds is not None:
            self.desired_rounds.stop()
            self.desired_rounds = None
        if self.publisher is not None:
            self.publisher.stop()
            self.publisher = None
        if self.ingest is not None:
            self.ingest.stop()
            self.ingest = None
        if self.broker is not None:
            self.broker.stop()
            self.broker = None
        self.engine.dispose()

    # --- jobs ----------------------------------------------------------------------------

    def _jobs(self, on_signed: Callable[[], None]) -> BackgroundScheduler:
        scheduler = new_scheduler()
        root, keys = self.repository.root, self.repository.keys_dir
        add_refresh_job(
            scheduler,
            lambda: ReleaseRepository.open(root, keys),
            self.config.repository.refresh_interval_seconds,
        )
        driver = make_driver(
            self.engine,
            self.authority.director.private_key,
            self.repository,
            self.config.telemetry.k_anonymity,
            on_signed=on_signed,
        )
        add_rollout_job(scheduler, driver, FLEET_JOB_SECONDS)
        add_rollup_job(scheduler, self.engine)
        if self.broker is not None:
            scheduler.add_job(
                self.watch_fleet, "interval", seconds=FLEET_JOB_SECONDS, id="watch-fleet"
            )
        return scheduler

    def desired_round(self) -> int:
        """Renew states that will soon expire, then publish what the broker lacks."""
        desired.renew_expiring(self.engine, self.authority.director.private_key())
        return self.publisher.publish_pending(self.engine) if self.publisher else 0

    def watch_fleet(self) -> None:
        """Carry revocations and group changes made by other processes to the broker."""
        if self.broker is None:
            return
        revoked = self.authority.ca.revoked_serials()
        if revoked != self._revoked:
            log.info("a certificate was revoked: the broker cuts the device off")
            self._revoked = revoked
            self.broker.cut_off_revoked()
        groups = self._device_groups()
        if groups != self._groups:
            self._groups = groups
            self.broker.set_device_groups(groups)

    def _device_groups(self) -> dict[str, list[str]]:
        return {
            d.id: [d.group]
            for d in registry.list_devices(self.engine)
            if d.group is not None and d.revoked_at is None
        }

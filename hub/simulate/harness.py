"""The hub's fleet parts in one process, for simulations: database, device CA, managed
Mosquitto, director key, desired-state publisher, ingest worker, telemetry token issuance.

The real parts, wired as `edge-hub serve` wires them, minus HTTP: tests of rollouts, the
rollout benchmark and demos start one, enroll simulated devices and drive the hub's
functions (`assign`, `publish_pending`, queries) directly.

    with SimulationHub(tmp_path) as hub:
        enrolled = hub.enroll(50, group="lab")
        with hub.fleet() as fleet:
            fleet.add(enrolled, active={"chat": "1.0.0"})
            fleet.connect()
            hub.assign([e.device_id for e in enrolled], "chat", "1.1.0")
            hub.publish_pending()
"""

from __future__ import annotations

import socket
from datetime import timedelta
from pathlib import Path
from typing import Any

from edge_agent.mqtt import BrokerAddress
from edge_agent.protocol import MaintenanceWindow
from edge_agent.protocol.topics import HUB_INGEST_TOPICS
from hub.broker import ManagedMosquitto
from hub.db import make_engine, migrate, sqlite_url
from hub.fleet import desired, registry
from hub.fleet.director import DirectorKey
from hub.fleet.identity import DeviceCA
from hub.fleet.models import DesiredRecord
from hub.fleet.publisher import DesiredPublisher
from hub.ingest.consumer import IngestConsumer, IngestSettings, writer_processes_for
from hub.simulate import director_public_keys
from hub.simulate.enroll import Enrolled, enroll_simulated
from hub.simulate.fleet import SimulatedFleet
from hub.telemetry.issuance import TokenIssuer
from hub.telemetry.keys import PeriodKeys, load_or_create_seed

CONNECT_TIMEOUT_S = 10.0


def free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class SimulationHub:
    def __init__(self, folder: Path, *, port: int | None = None, ingest: bool = True) -> None:
        self.folder = folder
        self.engine = make_engine(sqlite_url(folder / "hub.db"))
        migrate(self.engine)
        self.ca = DeviceCA(folder / "ca")
        self.broker = ManagedMosquitto(
            folder / "broker", self.ca, port=port or free_loopback_port()
        )
        self.director_key = DirectorKey(folder / "keys").private_key()
        self.token_seed_file = folder / "telemetry-token.seed"
        self.token_issuer = TokenIssuer(
            self.engine, PeriodKeys(load_or_create_seed(self.token_seed_file))
        )
        self.address = BrokerAddress(self.broker.host, self.broker.port, tls=True)
        self.publisher = DesiredPublisher(
            self.address, self.ca.hub_client_files("_hub-director").client()
        )
        self.ingest: IngestConsumer | None = None
        if ingest:
            self.ingest = IngestConsumer(
                self.engine,
                IngestSettings(
                    host=self.broker.host,
                    port=self.broker.port,
                    client_id="_hub-ingest",
                    tls=self.ca.hub_client_files("_hub-ingest").client(),
                    # The managed Mosquitto's one worker: plain topics, no $share group.
                    filters=HUB_INGEST_TOPICS,
                    # As `edge-hub serve`: reports stored by a child process, off this
                    # process's GIL (the thread writer slowed the publisher during waves).
                    writer="process",
                    writer_processes=writer_processes_for(str(self.engine.url)),
                    token_seed_file=self.token_seed_file,
                ),
            )

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self.broker.start()
        self.publisher.start()
        if not self.publisher.wait_connected(CONNECT_TIMEOUT_S):
            raise RuntimeError(
                f"the desired-state publisher could not connect; {self.broker.log()[-2000:]}"
            )
        if self.ingest is not None:
            self.ingest.start()

    def stop(self) -> None:
        if self.ingest is not None:
            self.ingest.stop()
        self.publisher.stop()
        self.broker.stop()
        self.engine.dispose()

    def __enter__(self) -> SimulationHub:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # --- fleet ---------------------------------------------------------------------------

    def enroll(
        self, count: int, *, prefix: str = "sim", group: str | None = None, start: int = 0
    ) -> list[Enrolled]:
        """`count` simulated devices enrolled through the CA and registry (prefix-00001...)."""
        if group is not None and group not in {g.name for g in registry.list_groups(self.engine)}:
            registry.create_group(self.engine, group)
        ids = [f"{prefix}-{n:05d}" for n in range(start, start + count)]
        return enroll_simulated(self.engine, self.ca, self.folder / "devices", ids, group=group)

    def fleet(self, **options: Any) -> SimulatedFleet:
        """A SimulatedFleet on this hub's broker, trusting its director key, with tokens."""
        return SimulatedFleet(
            self.address,
            director_public_keys(self.director_key),
            issue_token=self.token_issuer.issue,
            **options,
        )

    def assign(
        self,
        device_ids: list[str],
        model: str,
        version: str,
        *,
        window: MaintenanceWindow | None = None,
        ttl: timedelta = desired.DEFAULT_TTL,
    ) -> list[DesiredRecord]:
        """`hub.fleet.desired.assign` with every release counted as listed (simulations
        have no TUF repository)."""
        return desired.assign(
            self.engine,
            self.director_key,
            device_ids,
            model,
            version,
            listed=lambda _m, _v: True,
            window=window,
            ttl=ttl,
        )

    def publish_pending(self) -> int:
        return self.publisher.publish_pending(self.engine)

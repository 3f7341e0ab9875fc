"""The fleet link's settings: the `[sync]` and `[updates]` sections merged with what
`edge-agent enroll` brought (explicit config wins). Light on purpose: `serve` and `status`
read it on every device, in a fleet or not."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edge_agent.config import AgentConfig
from edge_agent.sync.addresses import BrokerAddress, TlsFiles
from edge_agent.sync.identity import Identity

IDENTITY_DIR = "identity"
OUTBOX_FILE = "outbox.sqlite3"


@dataclass(frozen=True)
class SyncSettings:
    device_id: str
    broker: BrokerAddress
    tls: TlsFiles
    director_keys: Path | None
    update_source: str
    update_token: str | None
    update_ca: Path | None = None  # the hub CA, when the updates come from the enrolled hub


def identity_of(config: AgentConfig) -> Identity:
    return Identity(config.data_dir / IDENTITY_DIR)


def sync_settings(config: AgentConfig) -> SyncSettings | None:
    """The fleet link's settings, or None when neither config nor enrollment sets one up;
    ValueError naming what is wrong otherwise."""
    identity = identity_of(config)
    enrolled = identity.enrollment()
    sync, updates = config.sync, config.updates
    device_id = sync.device_id or (enrolled.device_id if enrolled else "")
    broker_url = sync.broker_url or (enrolled.broker_url if enrolled else "")
    if not device_id or not broker_url:
        return None
    own = identity.tls if enrolled else TlsFiles()
    return SyncSettings(
        device_id=device_id,
        broker=BrokerAddress.parse(broker_url),
        tls=TlsFiles(
            sync.tls_ca_file or own.ca_file,
            sync.tls_cert_file or own.cert_file,
            sync.tls_key_file or own.key_file,
        ),
        director_keys=sync.director_keys_file
        or (identity.director_keys_path if enrolled else None),
        update_source=updates.source or (enrolled.hub_url if enrolled else ""),
        update_token=updates.token or (enrolled.download_token if enrolled else None),
        update_ca=own.ca_file if enrolled else None,
    )

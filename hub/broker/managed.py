"""Which broker the hub runs for `[broker] mode`: Mosquitto when `managed` (the default),
none when `external`. There is no other broker: Mosquitto's identity binding and ACLs are
what keep devices apart (see hub.broker.mosquitto)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from hub.broker.child import BrokerError
from hub.broker.mosquitto import ManagedMosquitto
from hub.config import HubConfig
from hub.fleet.identity import DeviceCA


def managed_broker(
    config: HubConfig, ca: DeviceCA, device_groups: Mapping[str, Iterable[str]] | None = None
) -> ManagedMosquitto:
    """The Mosquitto `config` asks the hub to run; BrokerError when `[broker] mode` is
    external (the hub then only connects to `url`), BrokerMissing (with the install command
    for each system) when Mosquitto is not installed."""
    broker = config.broker
    if broker.mode == "external":
        raise BrokerError(f"[broker] mode is {broker.mode!r}: the hub uses {broker.url}, runs none")
    return ManagedMosquitto(
        broker.data_dir.expanduser(),
        ca,
        host=broker.host,
        port=broker.port,
        device_groups=device_groups,
        binary=broker.binary.expanduser() if broker.binary else None,
    )

"""Which broker the hub runs for `[broker] mode`: Mosquitto when `managed` (the default)
and installed, the embedded fallback broker when it is not or when `embedded` asks for it,
none when `external`."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from hub.broker.child import BrokerError, BrokerMissing, ChildBroker
from hub.broker.embedded import EmbeddedBroker
from hub.broker.fallback import is_loopback
from hub.broker.mosquitto import ManagedMosquitto
from hub.config import HubConfig
from hub.fleet.identity import DeviceCA

log = logging.getLogger(__name__)


def managed_broker(
    config: HubConfig, ca: DeviceCA, device_groups: Mapping[str, Iterable[str]] | None = None
) -> ChildBroker:
    """The broker `config` asks the hub to run; BrokerError when `[broker] mode` is
    external (the hub then only connects to `url`), BrokerMissing when Mosquitto is missing
    and the fallback cannot serve the configured (non-loopback) host."""
    broker = config.broker
    if broker.mode == "external":
        raise BrokerError(f"[broker] mode is {broker.mode!r}: the hub uses {broker.url}, runs none")
    data_dir = broker.data_dir.expanduser()
    if broker.mode == "managed":
        try:
            return ManagedMosquitto(
                data_dir,
                ca,
                host=broker.host,
                port=broker.port,
                device_groups=device_groups,
                binary=broker.binary.expanduser() if broker.binary else None,
            )
        except BrokerMissing as missing:
            if not is_loopback(broker.host):
                raise BrokerMissing(
                    f"{missing}. The embedded fallback broker listens on loopback only, and "
                    f"[broker] host is {broker.host}"
                ) from None
            log.warning("%s: falling back to the embedded broker", missing)
    return EmbeddedBroker(data_dir, ca, host=broker.host, port=broker.port)

"""The fallback broker (`hub.broker.fallback`) as the hub's child process: what the hub
runs when no Mosquitto binary exists, or when `[broker] mode = "embedded"` asks for it.

It speaks MQTT 5 with QoS 1, sessions, shared subscriptions and retained messages, and
checks every client certificate against the device CA and its CRL; it has no ACL and keeps
nothing on disk, and it listens on loopback only. A revocation reloads the CRL (open
connections of the revoked device end) instead of restarting, which would lose every
session it holds in memory.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Mapping

from hub.broker.child import ChildBroker

log = logging.getLogger(__name__)

WARNING = (
    "THE HUB RUNS ITS EMBEDDED FALLBACK BROKER on {host}:{port}: ACLs and persistence are "
    "OFF. Any enrolled device can read and publish on every device's topics, and queued "
    "messages, sessions and retained desired state are lost when the hub stops. It listens "
    "on loopback only, so devices on other machines cannot reach it. For a real fleet "
    'install Mosquitto (apt-get install mosquitto) or set [broker] mode = "external".'
)


class EmbeddedBroker(ChildBroker):
    name = "fallback-broker"
    description = "embedded fallback broker (NO ACL, NO persistence)"

    def _prepare(self) -> None:
        pass  # everything is on its command line

    def _argv(self) -> list[str]:
        tls = self.ca.server_files
        return [
            sys.executable,
            "-m",
            "hub.broker.fallback",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--ca",
            str(tls.ca),
            "--cert",
            str(tls.cert),
            "--key",
            str(tls.key),
            "--crl",
            str(self.ca.crl_path),
            "--log",
            str(self.log_path),
        ]

    def start(self) -> None:
        log.warning(WARNING.format(host=self.host, port=self.port))
        super().start()

    def set_device_groups(self, device_groups: Mapping[str, Iterable[str]]) -> None:
        """Nothing to carry: this broker has no ACL (the start-up warning says so)."""

    def cut_off_revoked(self) -> None:
        self.reload()

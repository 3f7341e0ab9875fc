"""The hub's authority over its fleet, from its config: the device CA, the enrollment
tokens, the download tokens and the director key. One place builds them, so the command
line and `edge-hub serve` always look in the same folders."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from hub.artifacts.tokens import TokenStore
from hub.config import HubConfig
from hub.fleet.director import DirectorKey
from hub.fleet.identity import DEFAULT_SERVER_HOSTS, DeviceCA, EnrollmentTokens

ENROLLMENT_TOKENS_FILE = "tokens.json"


@dataclass(frozen=True)
class FleetAuthority:
    config: HubConfig

    @cached_property
    def ca(self) -> DeviceCA:
        # The broker's certificate is made on the CA's first use: for the configured host
        # and loopback.
        hosts = list(dict.fromkeys((self.config.broker.host, *DEFAULT_SERVER_HOSTS)))
        return DeviceCA(self.config.identity_dir, server_hosts=hosts)

    @cached_property
    def enrollment_tokens(self) -> EnrollmentTokens:
        return EnrollmentTokens(self.config.identity_dir / ENROLLMENT_TOKENS_FILE)

    @cached_property
    def downloads(self) -> TokenStore:
        return TokenStore(self.config.tokens_file)

    @cached_property
    def director(self) -> DirectorKey:
        return DirectorKey(self.config.keys_dir)

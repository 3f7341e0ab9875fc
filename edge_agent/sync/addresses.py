"""Where the broker is and which TLS files to show it: plain values, no MQTT library, so
that reading the settings costs nothing on a device in no fleet."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        """mqtt://host[:1883] or mqtts://host[:8883]."""
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError(
                f"broker url {url!r} must be mqtt://host[:port] or mqtts://host[:port]"
            )
        tls = parts.scheme == "mqtts"
        return cls(parts.hostname, parts.port or (8883 if tls else 1883), tls)

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


@dataclass(frozen=True)
class TlsFiles:
    """The CA to trust and the client's own certificate and key (PEM files)."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @property
    def given(self) -> bool:
        return bool(self.ca_file or self.cert_file)

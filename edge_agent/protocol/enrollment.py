"""Enrollment over HTTPS: what a device sends the hub once, and what it gets back.

The device makes its key pair itself and sends only a certificate signing request whose
common name is its device id, with the one-time token the operator gave it. The hub answers
with everything the device needs to join the fleet: its client certificate, the CA that
signs the broker's certificate, where the broker is, the director keys that sign its desired
state, the fleet's TUF root, and a download token for the artifact server.
"""

from __future__ import annotations

from pydantic import Field

from edge_agent.protocol.messages import DeviceId, Wire

ENROLL_PATH = "/v1/enroll"
# The hub CA, served to anyone: a device believes it only if its hash matches the token.
HUB_CA_PATH = "/v1/hub-ca"
MAX_ENROLL_BYTES = 64 << 10
MAX_PEM_CHARS = 16 << 10


class EnrollmentRequest(Wire):
    device_id: DeviceId
    token: str = Field(min_length=1, max_length=256)
    csr_pem: str = Field(min_length=1, max_length=MAX_PEM_CHARS)


class EnrollmentResponse(Wire):
    device_id: DeviceId
    certificate_pem: str = Field(max_length=MAX_PEM_CHARS)
    ca_pem: str = Field(max_length=MAX_PEM_CHARS)
    broker_url: str = Field(pattern=r"^mqtts?://", max_length=512)
    director_keys: list[str] = Field(min_length=1, max_length=16)  # Ed25519 public keys, PEM
    tuf_root: str = Field(max_length=1 << 20)  # root.json as the hub serves it
    download_token: str = Field(min_length=1, max_length=256)

"""Enrolling simulated devices through the hub's own CA and registry, in-process.

Each device gets what a real one has after `edge-agent enroll`: its own P-256 key, a CSR
with its device id as CN, the certificate the hub's device CA issued for it, and a row in
the fleet registry. Certificates are issued and recorded in one batch
(`DeviceCA.issue_device_certificates`), the registry rows in one transaction, so ten
thousand devices enroll in seconds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from edge_agent.atomic import make_dirs
from hub.fleet import registry
from hub.fleet.identity import DeviceCA, TlsFiles, key_pem, make_csr, new_key


@dataclass(frozen=True)
class Enrolled:
    device_id: str
    tls: TlsFiles  # the hub CA, the device's certificate and key (files for paho)


def enroll_simulated(
    engine: Engine,
    ca: DeviceCA,
    folder: Path,
    device_ids: Sequence[str],
    *,
    group: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> list[Enrolled]:
    """Make keys and certificates for `device_ids` (files under `folder`) and record the
    devices as enrolled (in `group`, with `tags`)."""
    make_dirs(folder)
    keys = [new_key() for _ in device_ids]
    pairs = zip(keys, device_ids, strict=True)
    certs = ca.issue_device_certificates([(make_csr(key, device), device) for key, device in pairs])
    registry.enroll_many(engine, device_ids, group=group, tags=tags)
    enrolled = []
    for device_id, key, cert in zip(device_ids, keys, certs, strict=True):
        key_path, cert_path = folder / f"{device_id}.key", folder / f"{device_id}.crt"
        key_path.write_bytes(key_pem(key))
        key_path.chmod(0o600)
        cert_path.write_bytes(cert)
        enrolled.append(Enrolled(device_id, TlsFiles(ca.ca_cert_path, cert_path, key_path)))
    return enrolled

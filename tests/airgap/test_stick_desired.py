"""The desired state and maintenance window a stick carries, honoured by `edge-agent import`:
only the release the device's signed desired state names installs, only inside its window,
and a desired state the director did not sign, or an older one, installs nothing."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from tuf.api.metadata import Metadata, Root

from edge_agent.protocol import DesiredRelease, DesiredState, manifest_target, sign_desired
from edge_agent.protocol.bundle import BundleRelease
from edge_agent.protocol.window import MaintenanceWindow
from edge_agent.updates.errors import Refused
from provisioning.ceremony import bundle_signer
from provisioning.usb_export import export_bundle
from tests.airgap.conftest import BUNDLE_PASSPHRASE, DEVICE, Site
from tests.airgap.test_import import variant

DIRECTOR = Ed25519PrivateKey.generate()


@pytest.fixture
def fleet_site(site: Site) -> Site:
    """The site with 2.0.0 published too, and the device trusting the director key."""
    site.repo.publish(variant(site, "v2"), "tiny", "2.0.0")
    identity = site.device / "identity"
    identity.mkdir(parents=True, exist_ok=True)
    pem = DIRECTOR.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    (identity / "director-keys.json").write_text(json.dumps([pem.decode()]))
    return site


def desired(
    version: str,
    *,
    sequence: int = 5,
    window: MaintenanceWindow | None = None,
    key: Ed25519PrivateKey = DIRECTOR,
) -> bytes:
    now = datetime.now(UTC).replace(microsecond=0)
    state = DesiredState(
        device_id=DEVICE,
        sequence=sequence,
        issued_at=now,
        expires=now + timedelta(days=7),
        models={"tiny": DesiredRelease(version=version, manifest=manifest_target("tiny", version))},
        window=window,
    )
    return sign_desired(state, key).model_dump_json().encode()


def export(site: Site, stick: Path, signed: bytes) -> None:
    root = Metadata[Root].from_file(str(site.repo.trusted_root_path())).signed
    export_bundle(
        site.repo.root,
        stick,
        releases=[BundleRelease(model="tiny", version=v) for v in ("1.0.0", "2.0.0")],
        devices=[DEVICE],
        groups=[],
        site="ward-7",
        signers=[bundle_signer(site.bundle_key(), BUNDLE_PASSPHRASE, root)],
        desired={DEVICE: signed},
    )


def closed_window(now: datetime) -> MaintenanceWindow:
    """Daily for an hour, opening six hours from now: closed now."""
    return MaintenanceWindow(cron=f"0 {(now.hour + 6) % 24} * * *", duration_minutes=60)


def test_only_the_release_the_desired_state_names_installs(fleet_site: Site) -> None:
    stick = fleet_site.tmp / "stick"
    export(fleet_site, stick, desired("1.0.0"))  # the stick carries 1.0.0 and 2.0.0
    report = fleet_site.import_(stick)
    assert fleet_site.active() == "1.0.0"
    assert [o.version for o in report.outcomes] == ["1.0.0"]
    assert report.notes == ["tiny 2.0.0: not installed, this device's desired state names 1.0.0"]


def test_nothing_activates_outside_the_window(fleet_site: Site) -> None:
    now = datetime.now(UTC)
    window = closed_window(now)
    stick = fleet_site.tmp / "stick"
    export(fleet_site, stick, desired("2.0.0", window=window))
    report = fleet_site.import_(stick, now=now)
    assert report.window_closed and report.outcomes == []
    assert fleet_site.active() is None
    opens = window.next_open(now)
    assert opens is not None and report.window_opens == opens
    report = fleet_site.import_(stick, now=opens + timedelta(minutes=1))  # inside it
    assert fleet_site.active() == "2.0.0"


def test_a_desired_state_not_signed_by_the_director_installs_nothing(fleet_site: Site) -> None:
    before = fleet_site.untouched()
    stick = fleet_site.tmp / "stick"
    export(fleet_site, stick, desired("2.0.0", key=Ed25519PrivateKey.generate()))
    with pytest.raises(Refused, match="desired state is refused: desired state is signed by key"):
        fleet_site.import_(stick)
    assert fleet_site.active() is None
    assert fleet_site.untouched() == before


def test_an_older_desired_state_installs_nothing(fleet_site: Site) -> None:
    stick = fleet_site.tmp / "stick"
    export(fleet_site, stick, desired("2.0.0", sequence=5))
    fleet_site.import_(stick)
    fleet_site.import_(stick)  # the same stick again is fine
    assert fleet_site.active() == "2.0.0"
    old = fleet_site.tmp / "old-stick"
    export(fleet_site, old, desired("1.0.0", sequence=4))
    with pytest.raises(Refused, match="older than one this device accepted"):
        fleet_site.import_(old)
    assert fleet_site.active() == "2.0.0"

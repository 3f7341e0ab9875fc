"""The peer list a USB bundle carries: signed into the authorisation by `usb export --peer`,
kept by the device that imports it, and asked after its own `[peers] sources`."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from tuf.api.metadata import Metadata, Root

from edge_agent.config import AgentConfig
from edge_agent.protocol.bundle import Authorisation, BundleRelease
from edge_agent.updates.peer_setup import peer_urls
from edge_agent.updates.site_peers import site_peers
from provisioning.ceremony import bundle_signer
from provisioning.usb_export import export_bundle
from tests.airgap.conftest import BUNDLE_PASSPHRASE, DEVICE, Site


def test_the_bundle_names_the_site_peers(site: Site) -> None:
    """`usb export --peer` signs the list into the authorisation; after an import the
    device asks them after its own [peers] sources."""
    stick = site.tmp / "stick"
    summary = site.export(stick)  # conftest's export: no peers
    assert summary.authorisation.peers == []
    root_signed = summary.authorisation.model_dump(mode="json")
    with_peers = Authorisation.model_validate(
        {**root_signed, "peers": ["https://10.0.0.7:8765", "https://[fd00::7]:8765"]}
    )
    assert with_peers.peers == ["https://10.0.0.7:8765", "https://[fd00::7]:8765"]
    for bad in ("http://10.0.0.7:8765", "https://10.0.0.7:8765/x", "https://10.0.0.7"):
        with pytest.raises(ValidationError):
            Authorisation.model_validate({**root_signed, "peers": [bad]})

    root = Metadata[Root].from_file(str(site.repo.trusted_root_path())).signed
    export_bundle(
        site.repo.root,
        stick,
        releases=[BundleRelease(model="tiny", version="1.0.0")],
        devices=[DEVICE],
        groups=[],
        site="ward-7",
        signers=[bundle_signer(site.bundle_key(), BUNDLE_PASSPHRASE, root)],
        peers=["https://10.0.0.7:8765"],
    )
    site.import_(stick)
    assert site_peers(site.device) == ["https://10.0.0.7:8765"]
    config = AgentConfig.model_validate(
        {"store": {"dir": str(site.device)}, "peers": {"sources": ["https://10.0.0.9:8765"]}}
    )
    assert peer_urls(config) == ["https://10.0.0.9:8765", "https://10.0.0.7:8765"]

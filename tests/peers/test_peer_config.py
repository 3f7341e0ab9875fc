"""The `[peers]` settings: off and on loopback by default, peers named by https URLs only."""

from __future__ import annotations

import pytest

from edge_agent.config import AgentConfig, ConfigError, load_config


def test_peers_are_off_and_on_loopback_by_default() -> None:
    peers = AgentConfig().peers
    assert (peers.serve, peers.host, peers.sources) == (False, "127.0.0.1", ())


@pytest.mark.parametrize(
    "source",
    ["http://10.0.0.7:8765", "https://10.0.0.7:8765/chunks", "10.0.0.7:8765", "file:///media"],
)
def test_a_peer_that_is_not_an_https_address_is_refused(source: str) -> None:
    with pytest.raises(ConfigError, match="peers speak mutual TLS only"):
        load_config(environ={"EDGE_AGENT__PEERS__SOURCES": f'["{source}"]'}, path=None)


def test_https_peers_are_accepted() -> None:
    config = load_config(
        environ={"EDGE_AGENT__PEERS__SOURCES": '["https://10.0.0.7:8765", "https://pc-2.lan"]'}
    )
    assert config.peers.sources == ("https://10.0.0.7:8765", "https://pc-2.lan")

"""The agent's offline installer (built by firmware-images/build) as a signed release.

It is chunked and signed like a model, under the release name `edge-agent` with
`kind: agent` in its manifest, so the hub's artifact server, a USB export and LAN peers
carry it unchanged, and a device verifies every byte before it runs anything in it.
"""

from __future__ import annotations

import json
from pathlib import Path

from edge_agent.installed.release import AGENT_KIND, AGENT_RELEASE
from edge_agent.protocol import ReleaseManifest, Requirements
from hub.registry.errors import ReleaseRefused
from hub.registry.repository import ReleaseRepository

DESCRIPTION_FILE = "INSTALLER.json"


def publish_installer(repo: ReleaseRepository, installer: Path) -> ReleaseManifest:
    """Sign the installer folder as release `edge-agent` at the version it installs."""
    described = installer / DESCRIPTION_FILE
    try:
        description = json.loads(described.read_text())
        version, python = str(description["version"]), str(description["python"])
    except (OSError, ValueError, KeyError) as exc:
        raise ReleaseRefused(
            f"{described}: not an installer description ({exc}); build the folder with "
            "firmware-images/build"
        ) from None
    if description.get("kind") != AGENT_KIND:
        raise ReleaseRefused(f"{described}: kind is {description.get('kind')!r}, not 'agent'")
    return repo.publish(
        installer,
        AGENT_RELEASE,
        version,
        requirements=Requirements(runtime="cpython", min_runtime_version=python),
        kind=AGENT_KIND,
    )

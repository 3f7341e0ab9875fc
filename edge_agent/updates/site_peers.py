"""The site's chunk peers named by the last USB bundle this device accepted.

The offline-bundle role signs the list with the authorisation, so it is the hub operator's
choice, and the newest bundle's list replaces an older one. It only says whom to ask:
peers are reached over mutual TLS and every chunk is checked against the signed manifest.

<data dir>/site-peers.json: {"issued_at": ..., "bundle_id": ..., "peers": [...]}
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path

from edge_agent.atomic import write_atomic
from edge_agent.protocol.bundle import Authorisation

log = logging.getLogger(__name__)

SITE_PEERS_FILE = "site-peers.json"


def _recorded(data_dir: Path) -> tuple[datetime | None, list[str]]:
    try:
        data = json.loads((data_dir / SITE_PEERS_FILE).read_text())
        return datetime.fromisoformat(data["issued_at"]), [str(p) for p in data["peers"]]
    except FileNotFoundError:
        return None, []
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("%s is unreadable (%s): no site peers from bundles", SITE_PEERS_FILE, exc)
        return None, []


def record_site_peers(data_dir: Path, authorisation: Authorisation) -> None:
    """Keep the bundle's peer list, unless a newer bundle's is kept already."""
    issued, _peers = _recorded(data_dir)
    if issued is not None and issued > authorisation.issued_at:
        return
    record = {
        "issued_at": authorisation.issued_at.isoformat(),
        "bundle_id": authorisation.bundle_id,
        "peers": list(authorisation.peers),
    }
    write_atomic(data_dir / SITE_PEERS_FILE, json.dumps(record, indent=1).encode())


def site_peers(data_dir: Path) -> list[str]:
    return _recorded(data_dir)[1]

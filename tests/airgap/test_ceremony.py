"""The key ceremony through its commands: threshold root keys each under its own
passphrase, a hub that receives public keys and its online keys only, and a root rotation
that devices walk to."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import SSlibKey
from tuf.api.metadata import Metadata, Root

from edge_agent.protocol.bundle import OFFLINE_ROLE_FIELD
from edge_agent.store import ModelStore
from edge_agent.updates.fetchers import fetcher_for
from edge_agent.updates.manager import UpdateManager
from edge_agent.updates.source import ReleaseSource, pin_root
from hub.registry.repository import ReleaseRepository
from provisioning.ceremony import CeremonyError, rotate_root

BIN = Path(sys.executable).parent
PASSES = ["holder one passphrase", "holder two passphrase", "holder three passphrase"]


def run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / tool), *args], capture_output=True, text=True, timeout=120, env=os.environ
    )


def passfile(tmp: Path, name: str, text: str) -> Path:
    path = tmp / "passes" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(text + "\n")
    return path


@pytest.fixture
def ceremony(tmp_path: Path) -> tuple[Path, Path, Path]:
    ceremony, package, repo = (
        tmp_path / "ceremony",
        tmp_path / "hub" / "keys",
        tmp_path / "hub" / "repo",
    )
    files = [passfile(tmp_path, f"p{n}", text) for n, text in enumerate(PASSES)]
    args = [a for f in files for a in ("--passphrase-file", str(f))]
    bundle = passfile(tmp_path, "bundle", "bundle role passphrase")
    made = run(
        "edge-provision",
        "init-root",
        "--ceremony",
        str(ceremony),
        "--hub-package",
        str(package),
        "--root-keys",
        "3",
        "--threshold",
        "2",
        *args,
        "--bundle-passphrase-file",
        str(bundle),
    )
    assert made.returncode == 0, made.stderr
    init = run(
        "edge-hub",
        "repo",
        "init",
        "--repo",
        str(repo),
        "--keys",
        str(package),
        "--root-metadata",
        str(package / "1.root.json"),
    )
    assert init.returncode == 0, init.stderr
    return ceremony, package, repo


def private_keys(folder: Path) -> list[tuple[Path, str | None]]:
    """(file, key id) of every PEM private key under `folder`; None: one that could not be
    read without a passphrase (an encrypted key has no business on the hub either)."""
    found: list[tuple[Path, str | None]] = []
    for path in folder.rglob("*"):
        if not path.is_file() or b"PRIVATE KEY" not in path.read_bytes():
            continue
        try:
            private = load_pem_private_key(path.read_bytes(), password=None)
        except TypeError:
            found.append((path, None))
            continue
        found.append((path, SSlibKey.from_crypto(private.public_key()).keyid))
    return found


def test_root_keys_are_encrypted_one_passphrase_each(ceremony: tuple[Path, Path, Path]) -> None:
    folder = ceremony[0]
    root = Metadata[Root].from_file(str(folder / "1.root.json")).signed
    assert root.roles["root"].threshold == 2
    key_files = sorted((folder / "root-keys").glob("root-*.pem"))
    assert len(key_files) == 3
    for path in key_files:
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        with pytest.raises(TypeError):  # encrypted: unreadable without its passphrase
            load_pem_private_key(path.read_bytes(), password=None)
        opened = [p for p in PASSES if _opens(path, p)]
        assert len(opened) == 1, "each key opens with exactly one holder's passphrase"
    assert OFFLINE_ROLE_FIELD in root.unrecognized_fields


def _opens(path: Path, passphrase: str) -> bool:
    try:
        load_pem_private_key(path.read_bytes(), password=passphrase.encode())
    except ValueError:
        return False
    return True


def test_the_hub_holds_no_private_root_or_bundle_key(ceremony: tuple[Path, Path, Path]) -> None:
    folder, _package, _repo = ceremony
    root = Metadata[Root].from_file(str(folder / "1.root.json")).signed
    offline = set(root.unrecognized_fields[OFFLINE_ROLE_FIELD]["keys"])
    online = {k for role in ("targets", "snapshot", "timestamp") for k in root.roles[role].keyids}
    hub_keys = private_keys(folder.parent / "hub")
    assert hub_keys, "the hub needs its online keys"
    for path, keyid in hub_keys:
        assert keyid is not None, f"{path}: an encrypted (offline) key is on the hub"
        assert keyid not in root.roles["root"].keyids, f"{path}: a root key is on the hub"
        assert keyid not in offline, f"{path}: the offline-bundle key is on the hub"
        assert keyid in online
    # and the online keys are not in the ceremony folder's care
    assert all(keyid is None for _p, keyid in private_keys(folder))


def test_rotate_root_needs_the_threshold_and_devices_walk_to_it(
    ceremony: tuple[Path, Path, Path], tiny_model_dir: Path, tmp_path: Path
) -> None:
    folder, package, repo = ceremony
    with pytest.raises(CeremonyError, match="not signed by enough root keys"):
        rotate_root(folder, package, [PASSES[0].encode()], retire=[])
    device = tmp_path / "device"
    pin_root(device / "trust", repo / "metadata" / "1.root.json")
    rotated = run(
        "edge-provision",
        "rotate-root",
        "--ceremony",
        str(folder),
        "--hub-package",
        str(package),
        "--passphrase-file",
        str(tmp_path / "passes" / "p0"),
        "--passphrase-file",
        str(tmp_path / "passes" / "p2"),
    )
    assert rotated.returncode == 0, rotated.stderr
    adopted = run(
        "edge-hub",
        "repo",
        "adopt-root",
        str(package / "2.root.json"),
        "--repo",
        str(repo),
        "--keys",
        str(package),
    )
    assert adopted.returncode == 0, adopted.stderr
    ReleaseRepository.open(repo, package).publish(tiny_model_dir, "tiny", "1.0.0")
    base, fetcher = fetcher_for(str(repo))
    with ReleaseSource(base, device / "trust", fetcher) as source:
        UpdateManager(ModelStore(device), device / "state.json").update(source, "tiny")
    assert json.loads((device / "trust" / "root.json").read_bytes())["signed"]["version"] == 2

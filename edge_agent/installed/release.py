"""Fetch the agent's own release (the offline installer) and verify every byte of it
against its signed manifest before anything in it runs."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

from edge_agent.atomic import fsync_dir
from edge_agent.protocol import ReleaseManifest
from edge_agent.store.errors import StoreError
from edge_agent.updates.errors import Refused, RepositoryError
from edge_agent.updates.source import ReleaseSource

AGENT_RELEASE = "edge-agent"  # the release name the hub signs installers under
AGENT_KIND = "agent"


def release_kind(manifest: ReleaseManifest) -> str:
    return str((manifest.model_extra or {}).get("kind", "model"))


def fetch_installer(source: ReleaseSource, version: str, into: Path) -> ReleaseManifest:
    """Write installer `version` into `into` (made afresh), chunk by verified chunk."""
    manifest = source.manifest(AGENT_RELEASE, version)
    if release_kind(manifest) != AGENT_KIND:
        raise Refused(
            f"release {AGENT_RELEASE} {version} is of kind {release_kind(manifest)!r}, not "
            "an agent installer; ask the fleet's operator to publish it with "
            "firmware-images/build --publish-to"
        )
    shutil.rmtree(into, ignore_errors=True)
    into.mkdir(parents=True)
    try:
        _write_files(source, manifest, into)
    except StoreError as exc:  # a chunk the source itself found corrupt
        shutil.rmtree(into, ignore_errors=True)
        raise RepositoryError(
            f"{exc}: it does not match the signed manifest; nothing of this release runs"
        ) from exc
    except BaseException:
        shutil.rmtree(into, ignore_errors=True)  # no half-verified installer stays behind
        raise
    fsync_dir(into)
    return manifest


def _write_files(source: ReleaseSource, manifest: ReleaseManifest, into: Path) -> None:
    for entry in manifest.files:
        target = into / entry.path  # relative and inside: checked by the manifest's schema
        target.parent.mkdir(parents=True, exist_ok=True)
        whole = hashlib.sha256()
        with target.open("wb") as out:
            for chunk in entry.chunks:
                data = source.chunk(chunk.sha256, chunk.size)
                if len(data) != chunk.size or hashlib.sha256(data).hexdigest() != chunk.sha256:
                    raise RepositoryError(
                        f"a chunk of {entry.path} does not match the signed manifest; nothing "
                        "of this release runs. Try again, or another source"
                    )
                out.write(data)
                whole.update(data)
        if whole.hexdigest() != entry.sha256:
            raise RepositoryError(f"{entry.path} does not match the signed manifest")


def run_installer(folder: Path, root: Path, slot: str, state_dir: Path) -> None:
    """The verified release's own install script, offline, into the slot that does not run."""
    done = subprocess.run(
        ["bash", str(folder / "install"), "--root", str(root), "--slot", slot, "--no-system",
         "--state-dir", str(state_dir), "--config-dir", str(folder / "unused-config")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RepositoryError(
            f"the installer failed, nothing switched: {done.stderr.strip()[-1500:]}"
        )

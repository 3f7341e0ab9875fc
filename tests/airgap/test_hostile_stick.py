"""Hostile sticks, each made for real on disk: refused with a clear message, nothing
written outside staging (the device and the folders around it are hashed before and after),
nothing installed, the active model still serving."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tuf.api.metadata import Metadata, Root

from edge_agent.protocol.bundle import (
    AUTHORISATION_FILE,
    BUNDLE_DIR,
    MAX_FILES,
    REPOSITORY_DIR,
    BundleFile,
)
from edge_agent.protocol.bundle import _canonical as canonical
from edge_agent.updates.errors import Refused
from edge_agent.updates.health import check_model
from provisioning.ceremony import bundle_signer
from tests.airgap.conftest import BUNDLE_PASSPHRASE, Site
from tests.needs import need


@pytest.fixture
def serving(site: Site) -> Site:
    """The site with 1.0.0 installed from a first stick and a second release to carry."""
    site.export(site.tmp / "first-stick")
    site.import_(site.tmp / "first-stick")
    model = site.tmp / "v2"
    shutil.copytree(site.model_dir, model)
    config = json.loads((model / "genai_config.json").read_text())
    config["search"]["max_length"] = 55
    (model / "genai_config.json").write_text(json.dumps(config))
    site.repo.publish(model, "tiny", "2.0.0")
    site.export(site.tmp / "stick", versions=("2.0.0",))
    return site


def repository(site: Site) -> Path:
    return site.tmp / "stick" / BUNDLE_DIR / REPOSITORY_DIR


def a_chunk(site: Site) -> Path:
    """The chunk on the stick that the new release alone has (the changed config)."""
    return sorted(repository(site).glob("chunks/*/*"), key=lambda p: p.stat().st_size)[0]


def assert_refused(
    site: Site, match: str, progress: Callable[[int, int], None] | None = None
) -> None:
    before = site.untouched()
    with pytest.raises(Refused, match=match):
        site.import_(site.tmp / "stick", progress=progress)
    assert site.active() == "1.0.0"
    assert site.untouched() == before, "a refused stick changed files outside staging"
    assert not (site.device / "import-staging").exists()


def resign(site: Site, change: Callable[[dict[str, Any]], None]) -> None:
    """Re-sign an altered authorisation with the real bundle key (a stolen key, or a bug in
    the hub): the device's own checks of what is listed must still hold."""
    path = site.tmp / "stick" / BUNDLE_DIR / AUTHORISATION_FILE
    signed = json.loads(path.read_bytes())["signed"]
    change(signed)
    root = Metadata[Root].from_file(str(site.repo.trusted_root_path())).signed
    signer = bundle_signer(site.bundle_key(), BUNDLE_PASSPHRASE, root)
    envelope = {"signed": signed, "signatures": [signer.sign(canonical(signed)).to_dict()]}
    path.write_text(json.dumps(envelope, separators=(",", ":")))


def test_symlinked_chunk_pointing_outside_is_refused(serving: Site) -> None:
    chunk = a_chunk(serving)
    outside = serving.tmp / "outside-copy"
    outside.write_bytes(chunk.read_bytes())  # the right bytes, behind a link
    chunk.unlink()
    chunk.symlink_to(outside)
    assert_refused(serving, "link is refused")


def test_symlinked_folder_is_refused(serving: Site) -> None:
    chunk = a_chunk(serving)
    folder = chunk.parent
    elsewhere = serving.tmp / "elsewhere"
    folder.rename(elsewhere)
    folder.symlink_to(elsewhere)
    assert_refused(serving, "link is refused")


def test_hard_link_is_refused(serving: Site) -> None:
    chunk = a_chunk(serving)
    os.link(chunk, serving.tmp / "stick" / "second-name")
    assert_refused(serving, "hard-linked")


def test_fifo_is_refused_without_blocking(serving: Site) -> None:
    chunk = a_chunk(serving)
    chunk.unlink()
    os.mkfifo(chunk)
    assert_refused(serving, "not a regular file")


def test_device_file_is_refused(serving: Site) -> None:
    chunk = a_chunk(serving)
    chunk.unlink()
    try:
        os.mknod(chunk, 0o600 | 0o020000, os.makedev(1, 3))  # /dev/null's numbers
    except PermissionError:
        need(False, "making a device file needs root: run the suite as root (as CI does)")
    assert_refused(serving, "not a regular file")


def test_truncated_file_is_refused(serving: Site) -> None:
    chunk = a_chunk(serving)
    os.truncate(chunk, chunk.stat().st_size - 1)
    assert_refused(serving, "lists")


def test_altered_file_is_refused(serving: Site) -> None:
    chunk = a_chunk(serving)
    data = bytearray(chunk.read_bytes())
    data[0] ^= 1
    chunk.write_bytes(bytes(data))
    assert_refused(serving, "do not match the signed authorisation")


def test_wrong_signature_is_refused(serving: Site) -> None:
    path = serving.tmp / "stick" / BUNDLE_DIR / AUTHORISATION_FILE
    envelope = json.loads(path.read_bytes())
    envelope["signed"]["devices"].append("intruder")
    path.write_text(json.dumps(envelope))
    assert_refused(serving, "valid signatures of the offline-bundle role")


def test_a_key_the_root_does_not_name_is_refused(serving: Site) -> None:
    """An authorisation signed by another fleet's (or a retired) bundle key."""
    from securesystemslib.signer import CryptoSigner

    path = serving.tmp / "stick" / BUNDLE_DIR / AUTHORISATION_FILE
    signed = json.loads(path.read_bytes())["signed"]
    other = CryptoSigner.generate_ed25519()
    envelope = {"signed": signed, "signatures": [other.sign(canonical(signed)).to_dict()]}
    path.write_text(json.dumps(envelope))
    assert_refused(serving, "0 valid signatures")


def test_path_traversal_in_a_signed_listing_is_refused(serving: Site) -> None:
    def escape(signed: dict[str, Any]) -> None:
        files = signed["files"]
        assert isinstance(files, list)
        files[-1]["path"] = "chunks/../../../../escaped"

    resign(serving, escape)
    assert_refused(serving, "not a plain file name")
    assert not list(serving.tmp.rglob("escaped"))


def test_absurd_listed_size_is_refused(serving: Site) -> None:
    def huge(signed: dict[str, Any]) -> None:
        files = signed["files"]
        assert isinstance(files, list)
        files[-1]["size"] = 1 << 50

    resign(serving, huge)
    assert_refused(serving, "less than or equal")


def test_absurd_count_is_refused(serving: Site) -> None:
    def many(signed: dict[str, Any]) -> None:
        files = signed["files"]
        assert isinstance(files, list)
        entry = files[-1]
        files.extend(
            BundleFile(path=f"chunks/zz/{i:064x}", size=1, sha256=entry["sha256"]).model_dump()
            for i in range(MAX_FILES + 1)
        )

    resign(serving, many)
    assert_refused(serving, f"at most {MAX_FILES}")


def test_oversized_authorisation_file_is_refused(serving: Site) -> None:
    path = serving.tmp / "stick" / BUNDLE_DIR / AUTHORISATION_FILE
    with path.open("r+b") as handle:
        handle.truncate(200 * 1024 * 1024)  # sparse: the device must not read it all
    assert_refused(serving, "larger than")


def pull_once(action: Callable[[], None]) -> Callable[[int, int], None]:
    """A progress hook that does `action` once, after the first file was copied."""
    pulled = {"done": False}

    def pull(_done: int, _total: int) -> None:
        if not pulled["done"]:
            pulled["done"] = True
            action()

    return pull


def test_file_vanishing_mid_import_is_refused(serving: Site) -> None:
    last = sorted(repository(serving).glob("chunks/*/*"))[-1]
    assert_refused(serving, "cannot open it", progress=pull_once(last.unlink))


def test_file_cut_short_mid_import_is_refused(serving: Site) -> None:
    last = sorted(repository(serving).glob("chunks/*/*"))[-1]
    assert_refused(serving, "lists", progress=pull_once(lambda: os.truncate(last, 1)))


def test_stick_changed_after_the_copy_installs_what_was_verified(serving: Site) -> None:
    """The staging copy is what is verified and installed: altering the stick once a file
    was copied changes nothing."""
    chunks = sorted(repository(serving).glob("chunks/*/*"))
    report = serving.import_(
        serving.tmp / "stick",
        progress=lambda done, total: chunks[0].write_bytes(b"evil") if done == total else None,
    )
    assert report.errors == []
    assert serving.active() == "2.0.0"
    active = serving.store.active("tiny")
    assert active is not None
    check_model(active.path)

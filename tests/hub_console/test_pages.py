"""The release, telemetry and device-certificate pages over real HTTP, against a real signed
release repository and a real device CA; revoking a release and a device through the
console, attacked as a viewer, without a CSRF token and without a reason, each refusal proved
by its effect (the signed index, the CA's revocation list, the audit log)."""

from __future__ import annotations

import json

from cryptography import x509
from sqlalchemy import Engine

from hub.fleet import registry
from hub.rollouts import audit
from hub.rollouts.models import AuditEntry
from tests.hub_console.full import FullConsole, full_console_fixture  # noqa: F401 (fixture "full")
from tests.hub_telemetry.helpers import busy, store_all

REVOKE = {"reason": "tokenizer regression found in QA", "confirm": "yes"}


def _listed(full: FullConsole) -> list[str]:
    assert full.repository is not None
    return full.repository.index().versions("chat")


def _audit(engine: Engine, obj: str) -> list[AuditEntry]:
    return audit.entries(engine, obj)


def test_release_pages_show_files_shared_chunks_and_signatures(full: FullConsole) -> None:
    vera = full.browser("vera")
    listing = vera.get("/console/releases")
    assert listing.status_code == 200
    assert "1.0.0" in listing.text and "2.0.0" in listing.text
    detail = vera.get("/console/releases/chat/2.0.0")
    assert detail.status_code == 200, detail.text
    assert "genai_config.json" in detail.text
    # 2.0.0 changed one small file: most chunks are shared and a device moves few bytes.
    assert full.repository is not None
    new = full.repository.manifest("chat", "2.0.0")
    old = full.repository.manifest("chat", "1.0.0")
    old_chunks = {c.sha256 for f in old.files for c in f.chunks}
    moved = {c.sha256: c.size for f in new.files for c in f.chunks if c.sha256 not in old_chunks}
    assert moved and sum(moved.values()) < sum(f.size for f in new.files) / 2
    to_move = detail.text.split('id="to-move">', 1)[1].split("</dd>", 1)[0]
    shown_bytes = sum(moved.values())
    expected = f"{shown_bytes} B" if shown_bytes < 1024 else f"{shown_bytes / 1024:.1f} KiB"
    assert to_move.startswith(expected), to_move
    for role in ("root", "targets", "snapshot", "timestamp"):
        assert f"<td>{role}</td>" in detail.text
    assert "NOT signed" not in detail.text and "(expired)" not in detail.text
    assert "Revoke…" not in detail.text  # a viewer gets no revoke form
    assert vera.get("/console/releases/chat/9.9.9").status_code == 404


def test_a_release_is_revoked_only_by_an_operator_with_token_confirmation_and_reason(
    full: FullConsole,
) -> None:
    path = "/console/releases/chat/2.0.0/revoke"
    vera = full.browser("vera")
    vera.get("/console/releases/chat/2.0.0")
    assert vera.post(path, REVOKE).status_code == 403
    olga = full.browser("olga")
    olga.get("/console/releases/chat/2.0.0")
    assert olga.post(path, REVOKE, csrf=False).status_code == 403
    assert olga.post(path, {"confirm": "yes"}).status_code == 409  # no reason
    assert olga.post(path, {"reason": "x"}).status_code == 409  # not confirmed
    assert _listed(full) == ["1.0.0", "2.0.0"]
    assert _audit(full.engine, "release/chat/2.0.0") == []
    done = olga.post(path, REVOKE)
    assert done.status_code == 303, done.text
    assert _listed(full) == ["1.0.0"]  # the signed index no longer lists it
    [entry] = _audit(full.engine, "release/chat/2.0.0")
    assert (entry.actor, entry.action, entry.reason) == ("olga", "revoke_release", REVOKE["reason"])
    listing = olga.get("/console/releases").text
    assert "revoked" in listing


def test_device_page_shows_certificate_expiry(full: FullConsole) -> None:
    page = full.browser("vera").get("/console/devices/box-03").text
    assert full.authority is not None
    [cert] = full.authority.ca.certificates_of("box-03")
    assert cert.expires is not None
    assert cert.expires.strftime("%Y-%m-%d %H:%M") in page
    assert "days left" in page and f"{cert.serial:x}" in page
    assert "<title>box-03 · edge-hub console</title>" in page  # the title holds the id alone


def test_a_device_is_revoked_only_by_an_operator_with_token_confirmation_and_reason(
    full: FullConsole,
) -> None:
    assert full.authority is not None
    ca = full.authority.ca
    path = "/console/devices/box-03/revoke"
    vera = full.browser("vera")
    vera.get("/console/devices/box-03")
    assert vera.post(path, REVOKE).status_code == 403
    olga = full.browser("olga")
    olga.get("/console/devices/box-03")
    assert olga.post(path, REVOKE, csrf=False).status_code == 403
    assert olga.post(path, {"confirm": "yes"}).status_code == 409
    assert ca.revoked_serials() == [] and not ca.is_revoked("box-03")
    assert registry.get_device(full.engine, "box-03").revoked_at is None
    done = olga.post(path, REVOKE)
    assert done.status_code == 303, done.text
    # On the CRL file the broker loads, and marked in the registry.
    crl = x509.load_pem_x509_crl(ca.crl_path.read_bytes())
    [cert] = ca.certificates_of("box-03")
    assert crl.get_revoked_certificate_by_serial_number(cert.serial) is not None
    assert registry.get_device(full.engine, "box-03").revoked_at is not None
    [entry] = _audit(full.engine, "device/box-03")
    assert (entry.actor, entry.action, entry.reason) == ("olga", "revoke_device", REVOKE["reason"])
    assert "Revoke…" not in olga.get("/console/devices/box-03").text


def test_telemetry_page_shows_suppressed_cells_as_suppressed(full: FullConsole) -> None:
    # Hour 0: six devices report (k = 5: shown); hour 1: three (suppressed).
    store_all(full.engine, [busy(d, hour=0) for d in range(6)])
    store_all(full.engine, [busy(d, hour=1, errors={"timeout": 50}) for d in range(3)])
    page = full.browser("vera").get("/console/telemetry?model=chat&days=7").text
    assert 'id="chart-data"' in page
    data = json.loads(page.split('id="chart-data">', 1)[1].split("</script>", 1)[0])
    assert data["series"]["1.0.0"]["error_rate"] == [0.02, None]
    assert "suppressed: fewer than 5 devices" in page
    assert "0.5000" not in page  # the suppressed hour's error rate is nowhere

"""The artifact server: tokens, ranges, no way out of the repository, real HTTP."""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path

import httpx
import pytest

from edge_agent.protocol import chunk_path
from edge_agent.updates.fetchers import HttpFetcher
from edge_agent.updates.source import ReleaseSource, pin_root
from hub.registry.repository import ReleaseRepository
from tests.hub.conftest import ArtifactServer


def raw_get(port: int, path: str, token: str) -> tuple[int, bytes]:
    """Send the path exactly as written: HTTP clients would normalise '..' away."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        response = b""
        while block := conn.recv(65536):
            response += block
    head, _sep, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_health_is_open(artifact_server: ArtifactServer) -> None:
    r = httpx.get(artifact_server.url + "/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Basic abc"}, bearer("edt_wrong")])
def test_a_valid_token_is_required(
    artifact_server: ArtifactServer, headers: dict[str, str]
) -> None:
    artifact_server.tokens.issue("box-1")
    r = httpx.get(artifact_server.url + "/metadata/1.root.json", headers=headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    message = r.json()["error"]["message"]
    assert "edge-hub device token DEVICE_ID" in message


def test_tokens_are_stored_hashed_and_replaced_on_reissue(
    artifact_server: ArtifactServer, tmp_path: Path
) -> None:
    first = artifact_server.tokens.issue("box-1")
    stored = (tmp_path / "tokens.json").read_text()
    assert first not in stored
    assert (tmp_path / "tokens.json").stat().st_mode & 0o077 == 0
    assert httpx.get(
        artifact_server.url + "/metadata/timestamp.json", headers=bearer(first)
    ).is_success
    second = artifact_server.tokens.issue("box-1")
    assert (
        httpx.get(
            artifact_server.url + "/metadata/timestamp.json", headers=bearer(first)
        ).status_code
        == 401
    )
    r = httpx.get(artifact_server.url + "/metadata/timestamp.json", headers=bearer(second))
    assert r.status_code == 200
    assert r.headers["cache-control"] == "no-cache"
    assert json.loads(r.content)["signed"]["_type"] == "timestamp"


def test_range_requests_resume_a_chunk(
    repo: ReleaseRepository, tiny_model_dir: Path, artifact_server: ArtifactServer
) -> None:
    manifest = repo.publish(tiny_model_dir, "tiny", "1.0.0")
    sha256, size = max(manifest.unique_chunks().items(), key=lambda item: item[1])
    whole = (repo.root / chunk_path(sha256)).read_bytes()
    token = artifact_server.tokens.issue("box-1")
    url = f"{artifact_server.url}/{chunk_path(sha256)}"
    # A download cut after 1000 bytes, then resumed from there: the two parts make up the
    # chunk the signed manifest names.
    with httpx.stream("GET", url, headers=bearer(token)) as cut:
        received = b""
        for block in cut.iter_bytes(100):
            received += block
            if len(received) >= 1000:
                break
    received = received[:1000]
    r = httpx.get(url, headers={**bearer(token), "Range": f"bytes={len(received)}-"})
    assert r.status_code == 206
    assert r.headers["content-range"] == f"bytes 1000-{size - 1}/{size}"
    assert r.content == whole[1000:]
    assert hashlib.sha256(received + r.content).hexdigest() == sha256
    r = httpx.get(url, headers={**bearer(token), "Range": "bytes=10-19"})
    assert (r.status_code, r.content) == (206, whole[10:20])
    full = httpx.get(url, headers=bearer(token))
    assert full.status_code == 200
    assert full.headers["accept-ranges"] == "bytes"
    assert "immutable" in full.headers["cache-control"]


@pytest.mark.parametrize(
    "path",
    [
        "/metadata/../repository.json",
        "/metadata/%2e%2e/repository.json",
        "/chunks/..%2f..%2frepository.json",
        "/metadata/%2Fetc%2Fpasswd",
        "/metadata//etc/passwd",
        "/metadata/.lock",
        "/targets/",
        "/chunks",
        "/repository.json",
        "/keys/x",
        "/metadata/9.root.json",
    ],
)
def test_nothing_outside_the_served_folders(
    repo: ReleaseRepository, artifact_server: ArtifactServer, path: str
) -> None:
    token = artifact_server.tokens.issue("box-1")
    (repo.root / "chunks").mkdir(exist_ok=True)
    status, body = raw_get(artifact_server.port, path, token)
    assert status in (400, 404), body
    assert json.loads(body)["error"]["code"] == "not_found"
    assert b"expiry" not in body  # repository.json
    assert b"root:" not in body  # /etc/passwd


def test_a_symlink_out_of_the_repository_is_not_followed(
    repo: ReleaseRepository, artifact_server: ArtifactServer, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("not for devices")
    (repo.root / "targets" / "leak.json").symlink_to(secret)
    token = artifact_server.tokens.issue("box-1")
    r = httpx.get(artifact_server.url + "/targets/leak.json", headers=bearer(token))
    assert r.status_code == 404


def test_the_agent_updates_through_the_server(
    repo: ReleaseRepository,
    tiny_model_dir: Path,
    artifact_server: ArtifactServer,
    tmp_path: Path,
) -> None:
    """The agent's own TUF client and HTTP fetcher read what the hub signs and serves."""
    published = repo.publish(tiny_model_dir, "tiny", "1.0.0")
    repo.rotate_online_key("timestamp")
    trust = tmp_path / "trust"
    pin_root(trust, repo.trusted_root_path())
    fetcher = HttpFetcher(artifact_server.tokens.issue("box-1"))
    with fetcher.client, ReleaseSource(artifact_server.url + "/", trust, fetcher) as source:
        assert source.index().latest("tiny") == "1.0.0"
        manifest = source.manifest("tiny", "1.0.0")
        assert manifest == published
        sha256, size = next(iter(manifest.unique_chunks().items()))
        assert source.chunk(sha256, size) == (repo.root / chunk_path(sha256)).read_bytes()

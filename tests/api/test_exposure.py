"""Who the local API answers: the attacks a web page or a stranger can make, for real.

Each test sends what an attacker's browser or client would send (a rebound Host name, a
foreign Origin, no key, a body that trickles in) to a live server on 127.0.0.1 and checks
the answer and that no work was done.
"""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from edge_agent.config import ApiConfig
from tests.api.test_http_errors import BODY, CHAT, error_of

KEY = "k-7d1c2b9e"
AUTH = {"authorization": f"Bearer {KEY}"}


def port_of(server) -> int:  # type: ignore[no-untyped-def]
    return int(server.port)


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/models"), ("GET", "/metrics"), ("GET", "/readyz"), ("POST", CHAT)],
)
def test_dns_rebinding_host_is_refused_before_any_work(serve, finish_log, method, path) -> None:  # type: ignore[no-untyped-def]
    server = serve()
    port = port_of(server)
    for host in (f"attacker.example:{port}", f"localhost.attacker.example:{port}", "evil"):
        r = httpx.request(method, server.url + path, json=BODY, headers={"host": host})
        assert r.status_code == 403, (host, r.text)
        assert error_of(r)["code"] == "host_not_allowed"
        assert error_of(r)["type"] == "permission_error"
    assert finish_log.items == []  # no generation ran


def test_own_names_answer_on_the_real_port_only(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve()
    port = port_of(server)
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST.:{port}"):
        assert httpx.get(server.url + "/v1/models", headers={"host": host}).status_code == 200
    wrong_port = httpx.get(server.url + "/v1/models", headers={"host": f"localhost:{port + 1}"})
    assert wrong_port.status_code == 403


def test_foreign_origin_is_refused_and_cors_stays_closed(serve, finish_log) -> None:  # type: ignore[no-untyped-def]
    server = serve()
    port = port_of(server)
    for origin in ("http://attacker.example", f"http://attacker.example:{port}", "null"):
        r = httpx.post(server.url + CHAT, json=BODY, headers={"origin": origin})
        assert r.status_code == 403, origin
        assert error_of(r)["code"] == "origin_not_allowed"
    preflight = httpx.options(
        server.url + CHAT,
        headers={
            "origin": "https://attacker.example",
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type",
        },
    )
    assert preflight.status_code == 403
    assert "access-control-allow-origin" not in preflight.headers
    assert finish_log.items == []  # no generation ran
    same_origin = httpx.post(
        server.url + CHAT, json=BODY, headers={"origin": f"http://127.0.0.1:{port}"}
    )
    assert same_origin.status_code == 200
    assert "access-control-allow-origin" not in same_origin.headers


def test_configured_names_and_origins_are_let_in(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve(
        ApiConfig(allowed_hosts=("agent.lan",), cors_origins=("https://app.example.org",))
    )
    assert httpx.get(server.url + "/v1/models", headers={"host": "agent.lan"}).status_code == 200
    app = {"origin": "https://app.example.org"}
    r = httpx.post(server.url + CHAT, json=BODY, headers=app)
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "https://app.example.org"
    preflight = httpx.options(
        server.url + CHAT,
        headers={
            **app,
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://app.example.org"
    other = httpx.post(server.url + CHAT, json=BODY, headers={"origin": "https://other.org"})
    assert other.status_code == 403


@pytest.mark.parametrize(
    "path", ["/readyz", "/docs", "/redoc", "/openapi.json", "/metrics", "/v1/models"]
)
def test_with_keys_everything_but_healthz_needs_the_key(serve, path) -> None:  # type: ignore[no-untyped-def]
    server = serve(ApiConfig(api_keys=(KEY,)))
    r = httpx.get(server.url + path)
    assert r.status_code == 401
    assert error_of(r)["code"] == "invalid_api_key"
    assert httpx.get(server.url + path, headers={"authorization": "Bearer nope"}).status_code == 401
    assert httpx.get(server.url + path, headers=AUTH).status_code == 200


def test_healthz_stays_open_and_says_nothing_more(serve, tiny_model_dir) -> None:  # type: ignore[no-untyped-def]
    server = serve(ApiConfig(api_keys=(KEY,)))
    r = httpx.get(server.url + "/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}
    assert str(tiny_model_dir) not in r.text


def test_a_bad_body_without_a_key_is_401_not_400(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve(ApiConfig(api_keys=(KEY,)))
    for content in (b'{"model": ', b"[1, 2]", json.dumps({"model": "tiny"}).encode()):
        r = httpx.post(
            server.url + CHAT, content=content, headers={"content-type": "application/json"}
        )
        assert r.status_code == 401, content
        assert error_of(r)["code"] == "invalid_api_key"


def test_a_body_that_trickles_in_times_out_with_408(serve, finish_log) -> None:  # type: ignore[no-untyped-def]
    server = serve(ApiConfig(request_body_timeout_seconds=1))
    body = json.dumps(BODY).encode()
    head = (
        f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1:{port_of(server)}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port_of(server)), timeout=5) as sock:
        sock.sendall(head)
        sock.setblocking(False)
        answer = b""
        # A byte every 0.2 s: the body would take far longer than the 1 s deadline.
        for byte in body[:40]:
            try:
                sock.send(bytes([byte]))
            except OSError:
                break  # the server closed the connection: expected once it answered
            time.sleep(0.2)
            try:
                answer += sock.recv(65536)
            except BlockingIOError:
                continue
            if b"\r\n\r\n" in answer:
                break
        sock.setblocking(True)
        sock.settimeout(5)
        while b"}}" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert time.monotonic() - started < 4
    error = json.loads(answer.partition(b"\r\n\r\n")[2])["error"]
    assert error["code"] == "request_timeout"
    assert "request_body_timeout_seconds" in error["message"]
    assert finish_log.items == []  # no generation ran

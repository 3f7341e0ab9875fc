"""Serve this device's verified chunks to the other devices of its site (LAN peers).

    GET /chunks/<aa>/<sha256>    one chunk, by its content hash; Range requests supported

Nothing else is served: no listing, no metadata, no file names. A request is answered from
the chunks of the installed versions (their files, at the offsets their manifests give)
or from a download in progress, and only after the bytes were hashed again here, so a
file damaged on this disk is never passed on. Read-only: the server never writes.

Who may ask: devices of the same fleet only (mutual TLS, peer_tls). How many at once:
uvicorn's `limit_concurrency` answers 503 beyond `max_connections`, and at most
`max_parallel_reads` chunks are read from disk at a time.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from edge_agent.protocol.layout import SHA256_HEX
from edge_agent.store import ModelStore, StoreError
from edge_agent.updates.peer_tls import FleetTls, server_context

log = logging.getLogger(__name__)

# One byte range: "bytes=first-last", "bytes=first-" or "bytes=-suffix" (RFC 9110 14.1.2).
SINGLE_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
INDEX_REFRESH_SECONDS = 1.0


@dataclass(frozen=True)
class _Where:
    path: Path
    offset: int
    size: int


class ChunkIndex:
    """Where each chunk this device holds lies on disk. Rebuilt when a chunk is asked for
    that it does not know (a version installed since), at most once a second so that a
    flood of unknown hashes cannot keep it busy."""

    def __init__(self, store: ModelStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._where: dict[str, _Where] = {}
        self._built_at = float("-inf")

    def read(self, sha256: str) -> bytes | None:
        """The chunk's bytes, hashed again; None when this device does not hold it whole."""
        for attempt in range(2):
            where = self._locate(sha256, rebuild=attempt > 0)
            if where is not None:
                data = _read(where)
                if data is not None and hashlib.sha256(data).hexdigest() == sha256:
                    return data
                log.warning("chunk %s... on this disk is damaged or gone", sha256[:12])
        pending = self.store.chunk_file(sha256)  # a download in progress, hashed on arrival
        data = _read(_Where(pending, 0, -1)) if pending.is_file() else None
        if data is not None and hashlib.sha256(data).hexdigest() == sha256:
            return data
        return None

    def _locate(self, sha256: str, *, rebuild: bool) -> _Where | None:
        with self._lock:
            stale = time.monotonic() - self._built_at > INDEX_REFRESH_SECONDS
            if (rebuild or sha256 not in self._where) and stale:
                self._where = self._build()
                self._built_at = time.monotonic()
            return self._where.get(sha256)

    def _build(self) -> dict[str, _Where]:
        where: dict[str, _Where] = {}
        for model in self.store.models():
            for version in self.store.versions(model):
                try:
                    installed = self.store.version(model, version)
                except StoreError as exc:  # damaged or removed meanwhile: not served
                    log.warning("not sharing %s %s: %s", model, version, exc)
                    continue
                for entry in installed.manifest.files:
                    offset = 0
                    for chunk in entry.chunks:
                        where.setdefault(
                            chunk.sha256, _Where(installed.path / entry.path, offset, chunk.size)
                        )
                        offset += chunk.size
        return where


def _read(where: _Where) -> bytes | None:
    try:
        with where.path.open("rb") as handle:
            handle.seek(where.offset)
            return handle.read(where.size)
    except OSError:
        return None


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


def ranged(data: bytes, range_header: str | None) -> Response:
    """The whole chunk, or the one byte range asked for. A malformed or multi-part Range
    is ignored and the whole chunk sent, as RFC 9110 allows."""
    headers = {"Accept-Ranges": "bytes", "Cache-Control": "public, max-age=31536000, immutable"}
    match = SINGLE_RANGE.fullmatch(range_header.strip()) if range_header else None
    if match is None or match.groups() == ("", ""):
        return Response(data, headers=headers, media_type="application/octet-stream")
    first_text, last_text = match.groups()
    size = len(data)
    if first_text:
        first = int(first_text)
        last = min(int(last_text), size - 1) if last_text else size - 1
    else:  # a suffix: the last N bytes
        first, last = max(size - int(last_text), 0), size - 1
    if first >= size or first > last:
        return _error(
            416,
            "range_not_satisfiable",
            f"the chunk has {size} bytes; the range asked for lies outside it",
            {"Content-Range": f"bytes */{size}"},
        )
    headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    return Response(
        data[first : last + 1],
        status_code=206,
        headers=headers,
        media_type="application/octet-stream",
    )


def create_app(store: ModelStore, *, max_parallel_reads: int = 4) -> Starlette:
    index = ChunkIndex(store)
    limiter = anyio.CapacityLimiter(max_parallel_reads)

    async def chunk(request: Request) -> Response:
        prefix, sha256 = request.path_params["prefix"], request.path_params["sha256"]
        if not SHA256_HEX.fullmatch(sha256) or prefix != sha256[:2]:
            return _error(
                400,
                "not_a_chunk",
                "peers serve chunks by content hash only: GET /chunks/<first two hex "
                "digits>/<sha256 in 64 lowercase hex digits>",
            )
        data = await anyio.to_thread.run_sync(index.read, sha256, limiter=limiter)
        if data is None:
            return _error(404, "no_such_chunk", f"this device holds no chunk {sha256}")
        return ranged(data, request.headers.get("range"))

    async def not_found(request: Request, _exc: Exception) -> Response:
        return _error(
            404, "not_found", f"peers serve only /chunks/<aa>/<sha256>, not {request.url.path}"
        )

    async def bad_method(request: Request, _exc: Exception) -> Response:
        return _error(405, "method_not_allowed", f"{request.method} is not served here (read-only)")

    app = Starlette(
        routes=[Route("/chunks/{prefix}/{sha256}", chunk, methods=["GET"])],
        exception_handlers={404: not_found, 405: bad_method},
    )
    app.router.redirect_slashes = False
    return app


def peer_server(
    app: Any,
    tls: FleetTls,
    *,
    host: str,
    port: int,
    max_connections: int = 32,
) -> uvicorn.Server:
    """A uvicorn server for `app` behind the fleet's mutual TLS; `.run()` serves."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        # uvicorn counts the asking connection too: N + 1 serves N at once.
        limit_concurrency=max_connections + 1,
        timeout_keep_alive=15,
    )
    config.load()
    # uvicorn builds its context from file names and cannot require TLS 1.3 or read a CRL:
    # ours replaces it (uvicorn hands config.ssl to asyncio's create_server as is).
    config.ssl = server_context(tls)
    return uvicorn.Server(config)


class PeerService:
    """The chunk server in a thread of the agent's process (`[peers] serve = true`)."""

    def __init__(
        self,
        store: ModelStore,
        tls: FleetTls,
        *,
        host: str,
        port: int,
        max_connections: int = 32,
        max_parallel_reads: int = 4,
    ) -> None:
        app = create_app(store, max_parallel_reads=max_parallel_reads)
        self.server = peer_server(app, tls, host=host, port=port, max_connections=max_connections)
        self.url = f"https://{host}:{port}"
        self._thread = threading.Thread(target=self.server.run, name="peer-chunks", daemon=True)
        self.on_stop: list[Callable[[], None]] = []  # e.g. withdraw its LAN announcement

    def start(self, timeout_seconds: float = 10.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout_seconds
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise OSError(
                    f"the peer chunk server could not listen on {self.url} (port in use?): "
                    "set [peers] host and port to a free address"
                )
            time.sleep(0.01)

    def stop(self, timeout_seconds: float = 10.0) -> None:
        for action in self.on_stop:
            action()
        self.server.should_exit = True
        self._thread.join(timeout_seconds)

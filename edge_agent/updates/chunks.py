"""Where a chunk's bytes come from: LAN peers first, then the release repository.

A chunk is trusted because the signed manifest names its hash, not because of who sent
it. So every source is asked in turn and every answer is checked against that hash; a
peer whose bytes do not match, or that fails in any way other than not having the chunk,
is passed over for the rest of the update, and the next source is asked. The release
repository (the hub, or the stick) is always last: its errors are the update's errors.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Protocol

import httpx
from tuf.api.exceptions import DownloadHTTPError

from edge_agent.protocol import chunk_path
from edge_agent.store import CorruptChunk
from edge_agent.updates.fetchers import Fetcher, HttpFetcher
from edge_agent.updates.peer_tls import FleetTls, PeerNotTrusted, PeerVerifier, client_context

log = logging.getLogger(__name__)

NOT_FOUND = 404


class ChunkSource(Protocol):
    label: str  # for logs and errors: "peer https://10.0.0.7:8765", "the release repository"

    def chunk(self, sha256: str, size: int) -> bytes:
        """The chunk's bytes, at most `size` of them, not yet checked against the hash."""
        ...

    def close(self) -> None: ...


class ChunkChain:
    """Asks `sources` in order for each chunk and returns only bytes with the right hash."""

    def __init__(self, sources: Sequence[ChunkSource]) -> None:
        if not sources:
            raise ValueError("a chunk chain needs at least one source")
        self.sources = list(sources)
        self.passed_over: dict[str, str] = {}  # label -> why it is no longer asked
        self.delivered: Counter[str] = Counter()  # label -> chunks it delivered

    def close(self) -> None:
        for source in self.sources:
            source.close()

    def chunk(self, sha256: str, size: int) -> bytes:
        *peers, last = self.sources
        for peer in peers:
            if peer.label in self.passed_over:
                continue
            try:
                data = peer.chunk(sha256, size)
            except Exception as exc:  # a peer can fail in any way; the next source is asked
                if _not_found(exc):
                    continue
                self._pass_over(peer, f"it failed: {_reason(exc)}")
                continue
            mismatch = _mismatch(sha256, size, data)
            if mismatch is None:
                self.delivered[peer.label] += 1
                return data
            self._pass_over(peer, f"it sent a chunk that the signed manifest refutes ({mismatch})")
        data = last.chunk(sha256, size)
        mismatch = _mismatch(sha256, size, data)
        if mismatch is not None:
            raise CorruptChunk(mismatch)
        self.delivered[last.label] += 1
        return data

    def _pass_over(self, source: ChunkSource, why: str) -> None:
        self.passed_over[source.label] = why
        log.warning("%s is no longer asked for chunks in this update: %s", source.label, why)


def _mismatch(sha256: str, size: int, data: bytes) -> str | None:
    actual = hashlib.sha256(data).hexdigest()
    if actual == sha256 and len(data) == size:
        return None
    return f"chunk {sha256[:12]}... arrived with hash {actual[:12]}..."


def _not_found(exc: BaseException) -> bool:
    return any(
        isinstance(cause, DownloadHTTPError) and cause.status_code == NOT_FOUND
        for cause in _causes(exc)
    )


def _reason(exc: BaseException) -> str:
    """The innermost cause says most (python-tuf wraps a fetcher's errors)."""
    return "; ".join(str(cause) or type(cause).__name__ for cause in _causes(exc))


def _causes(exc: BaseException) -> Iterable[BaseException]:
    seen: BaseException | None = exc
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


class PeerFetcher(HttpFetcher):
    """HTTPS to another device of the fleet: mutual TLS with the device certificates; the
    peer's certificate is validated before any of its answer is read (see peer_tls)."""

    def __init__(
        self,
        tls: FleetTls,
        *,
        bandwidth_bytes_per_second: int = 0,
        timeout_seconds: float = 10.0,
        min_bytes_per_second: int = 1024,
        slow_grace_seconds: float = 30.0,
    ) -> None:
        super().__init__(
            bandwidth_bytes_per_second=bandwidth_bytes_per_second,
            timeout_seconds=timeout_seconds,
            tls_context=client_context(tls),
            min_bytes_per_second=min_bytes_per_second,
            slow_grace_seconds=slow_grace_seconds,
        )
        self.verifier = PeerVerifier(tls)

    def _check_response(self, response: httpx.Response, url: str) -> None:
        stream = response.extensions.get("network_stream")
        ssl_object = stream.get_extra_info("ssl_object") if stream is not None else None
        if ssl_object is None:
            raise PeerNotTrusted(f"{url}: not a TLS connection; peers speak https only")
        self.verifier.verify(ssl_object.getpeercert(True), url)


class PeerChunks:
    """Chunks from one peer's chunk server (edge_agent.updates.peer_server)."""

    def __init__(self, base_url: str, fetcher: Fetcher) -> None:
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.label = f"peer {self.base_url.rstrip('/')}"
        self.fetcher = fetcher

    def chunk(self, sha256: str, size: int) -> bytes:
        return self.fetcher.fetch_limited(self.base_url + chunk_path(sha256), size)

    def close(self) -> None:
        self.fetcher.close()


def peer_sources(
    urls: Sequence[str],
    tls: FleetTls,
    *,
    bandwidth_bytes_per_second: int = 0,
    timeout_seconds: float = 10.0,
) -> list[ChunkSource]:
    """One source per configured peer, in the order given; PeerNotTrusted names a missing
    identity file (a device must be enrolled to use peers)."""
    return [
        PeerChunks(
            url,
            PeerFetcher(
                tls,
                bandwidth_bytes_per_second=bandwidth_bytes_per_second,
                timeout_seconds=timeout_seconds,
            ),
        )
        for url in urls
    ]

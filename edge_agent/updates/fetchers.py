"""Where releases come from: the hub over HTTP, a folder (USB stick); LAN peers build on
the HTTP fetcher in edge_agent.updates.chunks.

Each is a python-tuf `FetcherInterface`, so metadata and targets go through ngclient's
verification, and chunks through the same transport with a hard length limit.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

import httpx
from tuf.api.exceptions import (
    DownloadHTTPError,
    DownloadLengthMismatchError,
    SlowRetrievalError,
)
from tuf.ngclient import FetcherInterface

READ_BLOCK_BYTES = 64 * 1024


class Throttle:
    """Keeps the average transfer rate under a cap (0 = no cap). `clock` and `sleep` are
    replaceable so that tests can check the cap without waiting for it."""

    def __init__(
        self,
        bytes_per_second: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = bytes_per_second
        self._clock = clock
        self._sleep = sleep
        self._started = clock()
        self._sent = 0

    def consumed(self, size: int) -> None:
        if self.rate <= 0:
            return
        self._sent += size
        ahead = self._sent / self.rate - (self._clock() - self._started)
        if ahead > 0:
            self._sleep(ahead)


class Fetcher(FetcherInterface):
    def __init__(self, bandwidth_bytes_per_second: int = 0) -> None:
        self.throttle = Throttle(bandwidth_bytes_per_second)

    def close(self) -> None:
        """Release connections; the fetcher is not used afterwards."""

    def fetch_limited(self, url: str, max_bytes: int) -> bytes:
        """The whole body of `url`, refusing more than `max_bytes` (endless data)."""
        parts: list[bytes] = []
        received = 0
        for block in self.fetch(url):
            received += len(block)
            if received > max_bytes:
                raise DownloadLengthMismatchError(f"{url} sent more than {max_bytes} bytes")
            parts.append(block)
        return b"".join(parts)

    def _throttled(self, blocks: Iterator[bytes]) -> Iterator[bytes]:
        for block in blocks:
            self.throttle.consumed(len(block))
            yield block


def refuse_slow_retrieval(
    blocks: Iterator[bytes], url: str, min_bytes_per_second: int, grace_seconds: float
) -> Iterator[bytes]:
    """Pass `blocks` on, but give up once, after `grace_seconds` spent waiting for the
    network, it has delivered less than `min_bytes_per_second` on average. A server that
    trickles a byte now and then never trips a read timeout and would hold an update
    forever (TUF's slow retrieval attack). Only the time spent waiting for the network
    counts: the bandwidth cap's own pauses happen while the consumer holds a block."""
    waited = 0.0
    received = 0
    while True:
        started = time.monotonic()
        block = next(blocks, None)
        waited += time.monotonic() - started
        if block is None:
            return
        received += len(block)
        if waited > grace_seconds and received < min_bytes_per_second * waited:
            raise SlowRetrievalError(
                f"{url} sent {received} bytes in {waited:.1f} s of waiting, slower than the "
                f"{min_bytes_per_second} bytes/s this agent accepts (slow retrieval)"
            )
        yield block


class HttpFetcher(Fetcher):
    def __init__(
        self,
        token: str | None = None,
        *,
        bandwidth_bytes_per_second: int = 0,
        timeout_seconds: float = 30.0,
        ca_file: Path | None = None,
        min_bytes_per_second: int = 1024,
        slow_grace_seconds: float = 30.0,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(bandwidth_bytes_per_second)
        self.min_bytes_per_second = min_bytes_per_second
        self.slow_grace_seconds = slow_grace_seconds
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        # An enrolled device trusts its hub's CA alone for the hub; other sources, the
        # system's roots; `tls_context`: a LAN peer's mutual TLS (edge_agent.updates.chunks).
        verify: ssl.SSLContext | bool = tls_context or (
            ssl.create_default_context(cafile=str(ca_file)) if ca_file is not None else True
        )
        self.client = httpx.Client(headers=headers, timeout=timeout_seconds, verify=verify)

    def close(self) -> None:
        self.client.close()

    def _fetch(self, url: str) -> Iterator[bytes]:
        request = self.client.build_request("GET", url)
        response = self.client.send(request, stream=True)
        try:
            self._check_response(response, url)
        except BaseException:
            response.close()
            raise
        if response.status_code >= 400:
            response.close()
            raise DownloadHTTPError(f"{url}: HTTP {response.status_code}", response.status_code)
        return self._stream(response, url)

    def _check_response(self, response: httpx.Response, url: str) -> None:
        """Refuse a response before its body is read; the hub needs no check beyond TLS."""

    def _stream(self, response: httpx.Response, url: str) -> Iterator[bytes]:
        # Blocks as the network delivers them (not gathered into READ_BLOCK_BYTES first),
        # so that a trickle is measured as it arrives.
        delivered = refuse_slow_retrieval(
            response.iter_bytes(), url, self.min_bytes_per_second, self.slow_grace_seconds
        )
        try:
            yield from self._throttled(delivered)
        finally:
            response.close()


class FolderFetcher(Fetcher):
    """Reads `file://` URLs: a repository copied to a USB stick or a local folder."""

    def _fetch(self, url: str) -> Iterator[bytes]:
        parsed = urlparse(url)
        if parsed.scheme != "file":
            raise DownloadHTTPError(f"{url}: not a file:// URL", 400)
        path = Path(unquote(parsed.path))
        if not path.is_file():
            raise DownloadHTTPError(f"{path}: not found", 404)
        return self._throttled(self._read(path))

    @staticmethod
    def _read(path: Path) -> Iterator[bytes]:
        with path.open("rb") as handle:
            while block := handle.read(READ_BLOCK_BYTES):
                yield block


def fetcher_for(
    source: str,
    token: str | None = None,
    bandwidth_bytes_per_second: int = 0,
    ca_file: Path | None = None,
) -> tuple[str, Fetcher]:
    """The repository's base URL and the fetcher that reads it, from a URL or a path;
    `ca_file`: the only CA an https:// source's certificate may come from."""
    if source.startswith(("http://", "https://")):
        base = source if source.endswith("/") else source + "/"
        fetcher = HttpFetcher(
            token, bandwidth_bytes_per_second=bandwidth_bytes_per_second, ca_file=ca_file
        )
        return base, fetcher
    path = Path(source[7:] if source.startswith("file://") else source).expanduser().resolve()
    return path.as_uri() + "/", FolderFetcher(bandwidth_bytes_per_second)

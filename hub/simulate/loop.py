"""One thread that drives many paho clients through a selector.

paho's `loop_start` runs a thread per client: ten thousand simulated devices would be ten
thousand threads. paho also supports an external loop: it reports its socket through the
`on_socket_*` callbacks, and `loop_read` / `loop_write` / `loop_misc` do the work when the
socket is ready. `ClientLoop` is that loop, on `selectors.DefaultSelector` (epoll on Linux),
with timers for the simulated devices' delays.

Every paho call and every device callback runs in the loop's thread: `call_soon` and
`call_later` are the thread-safe ways in. A TLS socket can hold decrypted bytes that the
selector cannot see (`SSLSocket.pending()`), so reads repeat until none are left.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import resource
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from paho.mqtt.client import Client

log = logging.getLogger(__name__)

# loop_misc (keepalive pings, lost-connection checks) for every client this often.
MISC_INTERVAL_S = 1.0


def raise_fd_limit() -> int:
    """Raise the soft limit of open files to the hard one (each client holds a socket; many
    systems start at a soft 1,024). The new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


class ClientLoop:
    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._clients: set[Client] = set()
        self._calls: deque[Callable[[], None]] = deque()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.loop_thread_id: int | None = None

    # --- wiring clients ------------------------------------------------------------------

    def attach(self, client: Client) -> None:
        """Let this loop drive `client` (before its connect())."""
        client.on_socket_open = self._opened
        client.on_socket_close = self._closed
        client.on_socket_register_write = self._want_write
        client.on_socket_unregister_write = self._no_write
        self._clients.add(client)

    def detach(self, client: Client) -> None:
        self._clients.discard(client)

    def _opened(self, client: Client, _userdata: Any, sock: Any) -> None:
        self._selector.register(sock, selectors.EVENT_READ, client)

    def _closed(self, _client: Client, _userdata: Any, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):  # never registered, or closed
            self._selector.unregister(sock)

    def _modify(self, sock: Any, events: int, client: Client) -> None:
        with contextlib.suppress(KeyError, ValueError):  # the socket closed meanwhile
            self._selector.modify(sock, events, client)

    def _want_write(self, client: Client, _userdata: Any, sock: Any) -> None:
        self._modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, client)

    def _no_write(self, client: Client, _userdata: Any, sock: Any) -> None:
        self._modify(sock, selectors.EVENT_READ, client)

    # --- scheduling ----------------------------------------------------------------------

    def call_soon(self, func: Callable[[], None]) -> None:
        """Run `func` in the loop's thread (from any thread)."""
        self._calls.append(func)
        self._wake()

    def call_later(self, delay_s: float, func: Callable[[], None]) -> None:
        """Run `func` in the loop's thread after `delay_s` (call from the loop's thread, or
        wrap in call_soon)."""
        heapq.heappush(self._timers, (time.monotonic() + delay_s, next(self._order), func))
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # the pipe is full of wake-ups already
            self._wake_w.send(b"\0")

    # --- running -------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="simulated-devices", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stopping = True
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def run(self) -> None:
        self.loop_thread_id = threading.get_ident()
        next_misc = time.monotonic() + MISC_INTERVAL_S
        while not self._stopping:
            now = time.monotonic()
            timeout = min(next_misc, self._timers[0][0] if self._timers else next_misc) - now
            if self._calls:
                timeout = 0
            for key, mask in self._selector.select(max(timeout, 0)):
                client = key.data
                if client is None:
                    self._drain_wake()
                    continue
                self._serve(client, key.fileobj, mask)
            self._run_calls()
            self._run_timers()
            if time.monotonic() >= next_misc:
                for client in list(self._clients):
                    client.loop_misc()
                next_misc = time.monotonic() + MISC_INTERVAL_S

    def _serve(self, client: Client, sock: Any, mask: int) -> None:
        if mask & selectors.EVENT_READ:
            client.loop_read()
            # Decrypted bytes the selector cannot see: read until the TLS buffer is empty.
            while client.socket() is sock and getattr(sock, "pending", lambda: 0)() > 0:
                client.loop_read()
        if mask & selectors.EVENT_WRITE and client.socket() is sock:
            client.loop_write()

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _run_calls(self) -> None:
        for _ in range(len(self._calls)):
            self._guarded(self._calls.popleft())

    def _run_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, func = heapq.heappop(self._timers)
            self._guarded(func)

    @staticmethod
    def _guarded(func: Callable[[], None]) -> None:
        # One device's fault must not stop the loop that runs all the others.
        try:
            func()
        except Exception:
            log.exception("simulated device callback failed")

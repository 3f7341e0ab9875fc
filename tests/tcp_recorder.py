"""A loopback TCP proxy that records every byte in both directions.

Put between a process and a server (point the process at `port`), it shows what the
process really sends: every protocol field, not only the messages a subscriber receives.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Self


class TcpRecorder:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._sent = bytearray()  # client -> server, every connection in arrival order
        self._received = bytearray()  # server -> client
        self.connections = 0
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, name="tcp-recorder", daemon=True)

    @property
    def sent(self) -> bytes:
        """Everything the client side sent, over all connections so far."""
        with self._lock:
            return bytes(self._sent)

    @property
    def received(self) -> bytes:
        """Everything the server side answered, over all connections so far."""
        with self._lock:
            return bytes(self._received)

    def __enter__(self) -> Self:
        self._accepting.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._listener.close()  # ends the accept loop
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):  # already closed by its peer
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._accepting.join(10)
        for thread in self._threads:
            thread.join(10)

    def _accept(self) -> None:
        while True:
            try:
                client, _address = self._listener.accept()
            except OSError:
                return  # the listener was closed
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self.connections += 1
                self._sockets += [client, server]
            for source, sink, record in (
                (client, server, self._sent),
                (server, client, self._received),
            ):
                thread = threading.Thread(
                    target=self._pump, args=(source, sink, record), daemon=True
                )
                self._threads.append(thread)
                thread.start()

    def _pump(self, source: socket.socket, sink: socket.socket, record: bytearray) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            if not data:
                with contextlib.suppress(OSError):
                    sink.shutdown(socket.SHUT_WR)  # pass the half-close on
                return
            with self._lock:
                record += data
            try:
                sink.sendall(data)
            except OSError:
                return

"""Free loopback ports for the servers the tests start as child processes.

A port the kernel hands out for `bind(("127.0.0.1", 0))` comes from its ephemeral range,
where another process's outgoing connection can take it again before the child binds it
(a broker once failed with "Address already in use" that way on a loaded machine). Ports
are drawn at random below that range instead, where the kernel never hands out ports by
itself, and checked free.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

HOST = "127.0.0.1"
LOWEST = 10_000
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _below_ephemeral() -> int:
    """The first port of the kernel's ephemeral range (Linux's default where unreadable)."""
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def free_port() -> int:
    """A port nobody listens on, outside the range the kernel gives out by itself."""
    highest = _below_ephemeral() - 1
    for _ in range(200):
        port = random.randint(LOWEST, highest) if highest > LOWEST else 0
        with socket.socket() as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                continue  # taken, or still in TIME_WAIT: draw another
            return int(sock.getsockname()[1])
    raise RuntimeError(f"no free port between {LOWEST} and {highest} on {HOST}")

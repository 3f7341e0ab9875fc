"""systemd's notify protocol (sd_notify(3)): one datagram per state change on the Unix
socket named by $NOTIFY_SOCKET. Nothing to do when the variable is unset (not run by
systemd or by the launcher), so a hand-started agent behaves as before.

A datagram is all the protocol is; the `systemd-python` binding would pull libsystemd's
headers into the field install for these few lines.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Mapping

from edge_agent.installed.periodic import Periodic

log = logging.getLogger(__name__)

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"
WATCHDOG_USEC_ENV = "WATCHDOG_USEC"
WATCHDOG_PID_ENV = "WATCHDOG_PID"


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send `state` (e.g. "READY=1"); True when a notify socket took it."""
    env = os.environ if environ is None else environ
    address = env.get(NOTIFY_SOCKET_ENV, "")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket: a leading NUL byte on the wire
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), address)
    except OSError as exc:
        log.warning("could not notify the service manager (%s): %s", state, exc)
        return False
    return True


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between pings (half of WatchdogSec, as sd_watchdog_enabled advises), or None
    when no watchdog is set for this process."""
    env = os.environ if environ is None else environ
    usec = env.get(WATCHDOG_USEC_ENV, "")
    pid = env.get(WATCHDOG_PID_ENV, "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None  # meant for another process (the one that started us)
    return int(usec) / 2_000_000


class Watchdog(Periodic):
    """Pings WATCHDOG=1 while `alive()` says the agent still works; a hung agent stops
    pinging and the service manager restarts it."""

    def __init__(self, interval: float, alive: Callable[[], bool]) -> None:
        super().__init__(interval, "watchdog")
        self._alive = alive

    def _tick(self) -> bool:
        if self._alive():
            notify("WATCHDOG=1")
        else:
            log.warning("self-check failed: no watchdog ping this time")
        return True

"""Runs a Link in its own process until killed: `python -m tests.sync.link_process OUTBOX
STATE_DIR PORT DEVICE_ID`. The kill -9 test starts it, kills it mid-flush, starts it again."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from edge_agent.mqtt import BrokerAddress
from edge_agent.sync.link import Link
from edge_agent.sync.outbox import Outbox


def main() -> None:
    outbox_path, state_dir, port, device_id = sys.argv[1:5]
    outbox = Outbox(Path(outbox_path))
    link = Link(
        outbox,
        device_id=device_id,
        broker=BrokerAddress("127.0.0.1", int(port), tls=False),
        state_dir=Path(state_dir),
        max_in_flight=200,
    )
    link.start()
    print("started", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()

"""The processes under test: each writes through the real code onto the forgetful disk and
prints a line once an operation has returned, which is the moment the code promises that
the operation is durable (the outbox's put, the ingest writer's commit before its ack, an
install's activation, a transparency log record).

    python -m tests.powercut.workers SCENARIO FOLDER [RELEASE]
"""

from __future__ import annotations

import sys
from itertools import count
from pathlib import Path

MODEL = "tiny"


def outbox(folder: Path) -> None:
    from edge_agent.sync.outbox import Outbox, OutboxKind

    box = Outbox(folder / "agent" / "outbox.sqlite3")
    for n in count():
        message_id = f"m-{n:06d}"
        kind = OutboxKind.STATE if n % 2 else OutboxKind.EVENT
        box.put(f"devices/dev-1/{kind.value}", b"x" * (100 + n % 300), kind, message_id)
        print(f"stored {message_id}", flush=True)
        if n % 10 == 9:  # the broker acknowledged the oldest few: they may leave
            acked = [item.message_id for item in box.pending(limit=5)]
            box.ack_many(acked)
            print("acked " + " ".join(acked), flush=True)


def ingest(folder: Path) -> None:
    from hub import db
    from hub.ingest.consumer import BatchWriter
    from tests.hub_ingest.helpers import heartbeat, wire

    url = db.sqlite_url(folder / "hub" / "hub.sqlite3")
    db.migrate(url)
    writer = BatchWriter(db.make_engine(url))
    seconds = count()
    while True:
        batch = [heartbeat(f"dev-{n % 7}", seconds=next(seconds)) for n in range(20)]
        result = writer.write([wire(envelope) for envelope in batch])
        assert result is not None and result.stored == len(batch)
        # The point where the worker acknowledges the batch to the broker.
        print("stored " + " ".join(e.message_id for e in batch), flush=True)


def transparency(folder: Path) -> None:
    from datetime import UTC, datetime

    from edge_agent.telemetry.transparency import Action, TransparencyLog

    log = TransparencyLog(folder / "telemetry" / "transparency.jsonl", max_bytes=1 << 24)
    for n in count():
        log.record(Action.QUEUED, "telemetry/usage", f"report {n}".encode(), at=datetime.now(UTC))
        print(f"recorded report {n}", flush=True)


def install(folder: Path, release: Path) -> None:
    """Store the release's chunks, assemble it, activate it (as the update manager does)."""
    from edge_agent.protocol import ReleaseManifest
    from edge_agent.store import ModelStore

    store = ModelStore(folder / "store")
    manifest = ReleaseManifest.model_validate_json((release / "manifest.json").read_bytes())
    for sha256 in store.missing_chunks(manifest):
        store.put_chunk(sha256, (release / "chunks" / sha256).read_bytes())
    store.assemble(manifest)
    store.activate(manifest.model, manifest.version)
    print(f"activated {manifest.version}", flush=True)


def main(argv: list[str]) -> None:
    scenario, folder = argv[0], Path(argv[1])
    if scenario == "install":
        install(folder, Path(argv[2]))
    else:
        {"outbox": outbox, "ingest": ingest, "transparency": transparency}[scenario](folder)


if __name__ == "__main__":
    main(sys.argv[1:])

"""`python -m hub.ingest`: one ingest worker in the foreground, until SIGTERM or SIGINT.

Start several (distinct --client-id) to share the load; each keeps its own persistent
session, so use the same id again when restarting a worker.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path
from types import FrameType

from hub import db
from hub.ingest.consumer import IngestConsumer, IngestSettings, writer_processes_for


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hub.ingest", description=__doc__)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--client-id", default="edge-hub-ingest")
    parser.add_argument("--no-migrate", action="store_true", help="the schema is up to date")
    parser.add_argument(
        "--writer",
        choices=("process", "thread"),
        default="process",
        help="decode and store in a child process (default) or in this one",
    )
    parser.add_argument(
        "--token-seed-file",
        type=Path,
        default=None,
        help="the hub's telemetry token seed (without it telemetry reports are refused)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    if not args.no_migrate:
        db.migrate(args.database_url)
    engine = db.make_engine(args.database_url)
    consumer = IngestConsumer(
        engine,
        IngestSettings(
            host=args.host,
            port=args.port,
            client_id=args.client_id,
            writer=args.writer,
            writer_processes=writer_processes_for(args.database_url),
            token_seed_file=args.token_seed_file,
        ),
    )
    done = threading.Event()

    def _stop(_signum: int, _frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    consumer.start()
    print("ingest: ready", flush=True)  # the parent process waits for this line
    done.wait()
    consumer.stop()
    engine.dispose()
    logging.info("ingest: stopped; %s", consumer.stats)


if __name__ == "__main__":
    main()

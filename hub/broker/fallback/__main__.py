"""`python -m hub.broker.fallback --port N --ca ... --cert ... --key ... --crl ... --log F`:
the fallback broker as the hub's child process. SIGHUP rereads the CRL; SIGTERM stops, and
so does the hub's death."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from hub.broker.fallback import is_loopback
from hub.broker.fallback.server import FallbackBroker, TlsSettings


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m hub.broker.fallback")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    for name in ("ca", "cert", "key", "crl", "log"):
        parser.add_argument(f"--{name}", type=Path, required=True)
    parser.add_argument("--max-queued", type=int, default=1_000_000)
    return parser.parse_args(argv)


ORPHAN_CHECK_S = 1.0


async def stop_when_orphaned(broker: FallbackBroker, parent: int) -> None:
    """A hub killed outright cannot stop its broker: the broker stops itself."""
    while os.getppid() == parent:
        await asyncio.sleep(ORPHAN_CHECK_S)
    logging.warning("the hub (pid %d) is gone: stopping", parent)
    broker.stop()


async def run(broker: FallbackBroker) -> None:
    loop = asyncio.get_running_loop()
    watch = loop.create_task(stop_when_orphaned(broker, os.getppid()))
    loop.add_signal_handler(signal.SIGTERM, broker.stop)
    loop.add_signal_handler(signal.SIGINT, broker.stop)
    loop.add_signal_handler(signal.SIGHUP, broker.reload)
    try:
        await broker.serve()
    finally:
        watch.cancel()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        filename=args.log,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    if not is_loopback(args.host):
        logging.error("refusing to listen on %s: the fallback broker is loopback only", args.host)
        return 2
    tls = TlsSettings(args.ca, args.cert, args.key, args.crl)
    broker = FallbackBroker(args.host, args.port, tls, max_queued=args.max_queued)
    try:
        asyncio.run(run(broker))
    except OSError as error:
        logging.error("cannot listen on %s:%s: %s", args.host, args.port, error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Anonymous telemetry of a device with no link, through the sticks: the device's service
holds a window it has no token for and asks for one on its export; `edge-hub import`
evaluates the blinded request (once per device and week); the next stick brings the answer,
the service finalizes it and queues the window; the following export carries the report,
and `edge-hub telemetry report` shows it, counted once however often the stick is read.

The device's commands run without a network (unshare -n, as the round trip); its running
service's telemetry job is driven here, in-process, on the device's own data folder.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from edge_agent.config import TelemetryConfig
from edge_agent.sync.outbox import Outbox
from edge_agent.telemetry import factory
from tests.airgap.conftest import Site
from tests.airgap.test_returns_and_enrollment import enrolled
from tests.airgap.test_round_trip import Air, pytestmark  # noqa: F401 - runs in a namespace

WINDOW_SECONDS = 3600


class Clock:
    def __init__(self, at: float) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at


def reported(air: Air) -> tuple[list[bool], list[tuple[object, ...]]]:
    """What `edge-hub telemetry report` shows for tiny 1.0.0 (per cell: suppressed?), and
    the stored reports behind it. One device stays below the hub's k of at least 2 by
    design, so its cell is listed as suppressed; the rows show what it counts."""
    out = air.hub("telemetry", "report", "--model", "tiny", "--version", "1.0.0", "--json")
    cells = [cell["suppressed"] for cell in json.loads(out)]
    rows = air.rows(
        "select pseudonym, requests, tokens_out from telemetry_reports where model = 'tiny'"
    )
    return cells, rows


def test_telemetry_of_an_air_gapped_device_reaches_the_hub_once(site: Site) -> None:
    air, stick = enrolled(site)  # enrolled, 1.0.0 installed, its first export on the stick
    air.hub("import", str(stick), "--receipts", str(air.receipts))
    clock = Clock(time.time() - 2 * WINDOW_SECONDS)
    with Outbox(site.device / "sync" / "outbox.sqlite3") as outbox:
        telemetry = factory.build(
            TelemetryConfig(window_seconds=WINDOW_SECONDS),
            data_dir=site.device,
            outbox=outbox,
            agent_version="0.1.0",
            execution_provider="cpu",
            clock=clock,
        )
        telemetry.collector.record_request(
            "tiny", "1.0.0", ttft_s=0.05, per_token_s=0.01, tokens_in=12, tokens_out=8
        )
        clock.at += 2 * WINDOW_SECONDS
        assert telemetry.publisher.publish_due() == 0  # no token: held, a request spooled

    second = site.tmp / "second-stick"
    second.mkdir()
    air.offline("export", str(second))
    first_import = json.loads(air.hub("import", str(second), "--receipts", str(air.receipts)))
    again = json.loads(air.hub("import", str(second), "--receipts", str(air.receipts)))
    assert first_import["tokens_issued"] == 1
    assert again["tokens_issued"] == 0  # once per device and week, the answer kept
    assert reported(air) == ([], [])

    third = site.tmp / "third-stick"
    air.export(third)  # carries the receipt with the token answer
    air.offline("import", str(third))
    with Outbox(site.device / "sync" / "outbox.sqlite3") as outbox:
        telemetry.publisher.outbox = outbox
        assert telemetry.publisher.publish_due() == 1  # finalized: the held window goes out
    air.offline("export", str(third))
    air.hub("import", str(third), "--receipts", str(air.receipts))
    air.hub("import", str(third), "--receipts", str(air.receipts))  # the same stick again
    cells, rows = reported(air)
    assert cells == [True] and len(rows) == 1  # one report, stored once
    assert all(isinstance(n, int) and n > 0 for n in rows[0][1:])  # coarsened counts


def test_an_answer_for_another_request_is_not_taken(site: Site, tmp_path: Path) -> None:
    """A stick whose token answer was made for another blinded element (a replayed or
    forged receipt) leaves the window held: the proof does not verify for this request."""
    from voprf import ristretto

    from edge_agent.protocol.tokens import TokenRequest, TokenResponse
    from edge_agent.telemetry.stick_tokens import StickTokens, leave_answers, pending_requests
    from hub.telemetry.keys import PeriodKeys

    folder = tmp_path / "telemetry"
    stick = StickTokens(folder)
    kept: list[str] = []
    assert stick.token_for("2026-W48", "p" * 32, lambda *a: kept.append(a[2])) is None
    [request] = pending_requests(folder)
    keys = PeriodKeys(b"k" * 32)
    _client, other = ristretto.Client.blind(b"another input")
    forged = TokenRequest(period=request.period, blinded=other.serialize().hex())
    evaluated = keys.evaluate(request.period, bytes.fromhex(forged.blinded)).hex()
    leave_answers(
        folder,
        [
            TokenResponse(
                period=request.period,
                public_key=keys.public_key(request.period).hex(),
                evaluated=evaluated,
            )
        ],
    )
    assert stick.token_for("2026-W48", "p" * 32, lambda *a: kept.append(a[2])) is None
    assert kept == []
    right = keys.evaluate(request.period, bytes.fromhex(request.blinded)).hex()
    leave_answers(
        folder,
        [
            TokenResponse(
                period=request.period,
                public_key=keys.public_key(request.period).hex(),
                evaluated=right,
            )
        ],
    )
    token = stick.token_for("2026-W48", "p" * 32, lambda *a: kept.append(a[2]))
    assert token is not None and kept == [token]
    assert token == keys.token("2026-W48", "p" * 32).hex()

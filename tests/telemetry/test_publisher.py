"""The publisher queues reports in a real outbox on the telemetry topic, honours the
policy, and logs exactly the bytes it queued; the transparency log stays bounded."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edge_agent.config import AgentConfig, TelemetryConfig
from edge_agent.protocol import (
    TELEMETRY_TOPIC,
    Accelerator,
    CoresBucket,
    HardwareClass,
    MemoryBucket,
    TelemetryReport,
    decode,
)
from edge_agent.sync.outbox import Outbox, OutboxKind
from edge_agent.telemetry import (
    Action,
    Collector,
    Policy,
    PrivacyBudget,
    Publisher,
    RunMarker,
    TransparencyLog,
    render,
)
from edge_agent.telemetry.factory import build, show
from edge_agent.telemetry.pseudonym import pseudonym
from edge_agent.telemetry.tokens import Wallet
from edge_agent.telemetry.transparency import MIN_LOG_BYTES
from tests.telemetry.issuer import KeyIssuer

WINDOW = 3600
T0 = 1_893_456_000  # 2030-01-01T00:00:00Z
SECRET = b"s" * 32
HARDWARE = HardwareClass(
    cores=CoresBucket.C2, memory=MemoryBucket.GIB_4_8, accelerator=Accelerator.CPU
)


class Clock:
    def __init__(self) -> None:
        self.now = float(T0 + 60)

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    with Outbox(tmp_path / "outbox.db") as box:
        yield box


def publisher(
    tmp_path: Path,
    clock: Clock,
    *,
    policy: Policy = Policy.AGGREGATE,
    outbox: Outbox | None = None,
    dp_epsilon: float | None = None,
    budget: float = 10.0,
) -> Publisher:
    return Publisher(
        Collector(WINDOW, clock=clock),
        policy=policy,
        secret=SECRET,
        agent_version="0.1.0",
        hardware=HARDWARE,
        transparency=TransparencyLog(tmp_path / "sent.log", MIN_LOG_BYTES),
        outbox=outbox,
        dp_epsilon=dp_epsilon,
        budget=PrivacyBudget(tmp_path / "budget.json", budget) if dp_epsilon else None,
        rng=random.Random(3),
        clock=clock,
        tokens=Wallet(tmp_path / "tokens.json", KeyIssuer()).token_for,
    )


def use(pub: Publisher, requests: int = 7) -> None:
    for _ in range(requests):
        pub.collector.record_request(
            "tiny", "1.0.0", ttft_s=0.3, per_token_s=0.03, tokens_in=100, tokens_out=50
        )
    pub.collector.record_restart(crashed=False)


def test_reports_go_into_the_outbox_on_the_telemetry_topic(tmp_path: Path, outbox: Outbox) -> None:
    clock = Clock()
    pub = publisher(tmp_path, clock, outbox=outbox)
    use(pub)
    assert pub.publish_due() == 0  # the window is still open
    clock.now = T0 + WINDOW + 1
    assert pub.publish_due() == 2  # the release and the agent
    items = outbox.pending(10)
    assert [(i.topic, i.kind) for i in items] == [(TELEMETRY_TOPIC, OutboxKind.TELEMETRY)] * 2
    reports = [decode(i.topic, i.payload) for i in items]
    assert all(r.device_id is None for r in reports)
    assert all(r.sent_at == datetime.fromtimestamp(T0 + WINDOW, UTC) for r in reports)
    payloads = [r.payload for r in reports]
    assert all(isinstance(p, TelemetryReport) for p in payloads)
    agent, tiny = sorted(payloads, key=lambda p: p.model or "")  # type: ignore[union-attr]
    assert isinstance(tiny, TelemetryReport) and isinstance(agent, TelemetryReport)
    assert (tiny.requests, tiny.tokens_in, tiny.tokens_out) == (7, 768, 512)
    assert tiny.pseudonym == agent.pseudonym == pseudonym(SECRET, "2030-W01")
    assert agent.restarts == 5  # 1, coarsened
    # The log holds exactly the bytes that were queued.
    entries = pub.transparency.entries()
    assert [e.payload for e in entries] == [i.payload for i in items]
    assert {e.action for e in entries} == {Action.QUEUED}
    assert pub.publish_due() == 0  # nothing twice


def test_policy_off_sends_and_logs_nothing(tmp_path: Path, outbox: Outbox) -> None:
    clock = Clock()
    pub = publisher(tmp_path, clock, policy=Policy.OFF, outbox=outbox)
    use(pub)
    clock.now = T0 + WINDOW
    assert pub.publish_due() == 0
    assert pub.publish_all() == 0
    assert outbox.depth() == 0
    assert pub.transparency.entries() == []


def test_local_log_logs_but_never_sends(tmp_path: Path, outbox: Outbox) -> None:
    clock = Clock()
    pub = publisher(tmp_path, clock, policy=Policy.LOCAL_LOG, outbox=outbox)
    use(pub)
    assert pub.publish_all() == 2
    assert outbox.depth() == 0
    entries = pub.transparency.entries()
    assert [e.action for e in entries] == [Action.LOGGED] * 2
    assert all(decode(e.topic, e.payload).kind == "telemetry" for e in entries)


def test_aggregate_needs_an_outbox(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs an outbox"):
        publisher(tmp_path, Clock())


def test_dp_noises_reports_and_withholds_once_the_budget_is_spent(
    tmp_path: Path, outbox: Outbox
) -> None:
    clock = Clock()
    pub = publisher(tmp_path, clock, outbox=outbox, dp_epsilon=1.0, budget=2.0)
    for hour in range(3):
        clock.now = T0 + hour * WINDOW + 10
        use(pub, requests=1000)
    clock.now = T0 + 3 * WINDOW
    assert pub.publish_due() == 4  # two windows of two reports; the third is withheld
    queued = [decode(i.topic, i.payload).payload for i in outbox.pending(10)]
    assert all(isinstance(r, TelemetryReport) and r.dp_epsilon == 1.0 for r in queued)
    requests = [r.requests for r in queued if isinstance(r, TelemetryReport) and r.model]
    assert all(900 < n < 1100 for n in requests)
    # Noised, not exact: 1000 requests, each in ttft cell 3 and per-token cell 3, 100 + 50
    # tokens each. Exact values everywhere would mean the noise was never applied.
    exact = (1000, 100_096, 50_176, 1000, 1000)
    noised = [
        (r.requests, r.tokens_in, r.tokens_out, r.ttft_histogram[3], r.per_token_histogram[3])
        for r in queued
        if isinstance(r, TelemetryReport) and r.model
    ]
    assert len(noised) == 2
    assert all(sum(a != b for a, b in zip(values, exact, strict=True)) >= 3 for values in noised)
    # Under noise a class that never happened gets a noisy count too, so its presence
    # does not tell which did.
    assert any(r.errors for r in queued if isinstance(r, TelemetryReport))
    assert [e.action for e in pub.transparency.entries()][-2:] == [Action.WITHHELD] * 2
    # A new week, a new budget.
    clock.now = T0 + 7 * 24 * WINDOW + 10
    use(pub)
    clock.now += WINDOW
    assert pub.publish_due() == 2


def test_transparency_log_stays_bounded_and_keeps_the_newest(tmp_path: Path) -> None:
    log = TransparencyLog(tmp_path / "sent.log", MIN_LOG_BYTES)
    at = datetime(2030, 1, 1, tzinfo=UTC)
    payloads = [json.dumps({"n": n, "pad": "x" * 5000}).encode() for n in range(200)]
    for payload in payloads:
        log.record(Action.QUEUED, TELEMETRY_TOPIC, payload, at=at)
        assert log.size_bytes() <= MIN_LOG_BYTES
    kept = [e.payload for e in log.entries()]
    assert kept == payloads[-len(kept) :]
    assert len(kept) > 10
    assert '"n": 199' in render(log.entries())


def test_transparency_log_refuses_a_limit_below_two_records(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="under the minimum"):
        TransparencyLog(tmp_path / "sent.log", MIN_LOG_BYTES - 1)


def test_transparency_log_skips_a_torn_line(tmp_path: Path) -> None:
    log = TransparencyLog(tmp_path / "sent.log", MIN_LOG_BYTES)
    log.record(Action.LOGGED, TELEMETRY_TOPIC, b"{}", at=datetime(2030, 1, 1, tzinfo=UTC))
    with (tmp_path / "sent.log").open("ab") as torn:
        torn.write(b'{"recorded_at": "2030-')
    assert [e.payload for e in log.entries()] == [b"{}"]
    assert render([]) == "No telemetry has been sent or logged.\n"


def test_run_marker_tells_a_crash_from_a_clean_stop(tmp_path: Path) -> None:
    marker = RunMarker(tmp_path / "running")
    assert marker.start() is False  # first run
    assert marker.start() is True  # started again without a stop: it crashed
    marker.stop()
    assert marker.start() is False


def test_build_from_config_and_show(tmp_path: Path, outbox: Outbox) -> None:
    clock = Clock()
    config = TelemetryConfig()
    assert AgentConfig().telemetry == config
    telemetry = build(
        config,
        data_dir=tmp_path,
        outbox=outbox,
        agent_version="0.1.0",
        execution_provider="cpu",
        clock=clock,
        issuer=KeyIssuer(),
    )
    telemetry.start()
    telemetry.collector.record_request(
        "tiny", "1.0.0", ttft_s=0.3, per_token_s=0.03, tokens_in=1, tokens_out=1
    )
    telemetry.stop()
    assert outbox.depth() == 2
    shown = show(config, tmp_path)
    assert shown.count(TELEMETRY_TOPIC) == 2 and '"requests": 5' in shown
    assert "presence of a report shows the device was used" in shown
    assert KeyIssuer().keys.public_key("2030-W01").hex() in shown  # the key it was proven
    assert not (tmp_path / "telemetry" / "running").exists()


def test_config_refuses_a_window_that_does_not_divide_a_day() -> None:
    with pytest.raises(ValueError, match="does not divide a day"):
        TelemetryConfig(window_seconds=7000)
    with pytest.raises(ValueError, match="policy"):
        TelemetryConfig(policy="everything")

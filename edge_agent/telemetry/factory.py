"""Builds the telemetry parts from the agent's config, for `serve` and the CLI.

<data dir>/telemetry/secret            the pseudonym secret (0600, never sent)
<data dir>/telemetry/running           the run marker (crash detection)
<data dir>/telemetry/dp-budget.json    epsilon spent in the current period
<data dir>/telemetry/sent.log (+ .1)   the transparency log
<data dir>/telemetry/tokens.json       the anonymous tokens held, by period (0600)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from apscheduler.schedulers.background import BackgroundScheduler

from edge_agent.config import TelemetryConfig
from edge_agent.scheduling import new_scheduler
from edge_agent.telemetry.collector import Collector
from edge_agent.telemetry.hardware import hardware_class
from edge_agent.telemetry.lifecycle import RunMarker
from edge_agent.telemetry.privacy import PrivacyBudget
from edge_agent.telemetry.pseudonym import load_or_create_secret
from edge_agent.telemetry.publisher import Policy, Publisher
from edge_agent.telemetry.stick_tokens import StickTokens
from edge_agent.telemetry.tokens import Issuer, Wallet
from edge_agent.telemetry.transparency import TransparencyLog, render

if TYPE_CHECKING:  # SQLAlchemy: loaded only where an outbox is used
    from edge_agent.sync.outbox import Outbox


# What the hub can still learn although every report is anonymous, coarsened and maybe
# noised: printed by `edge-agent telemetry show` and in the README.
VISIBLE_NOTE = """
What the hub can see beyond the numbers above: a report exists only for a window in which
this device recorded something for that release (a request, an error, a load, an update,
a restart), so the presence of a report shows the device was used or restarted in that
hour, even when dp_epsilon noises every count. The hub also sees the pseudonym (the same
for every report of a week) and, when the device fetches the week's token, that this
device asked for one (not which token it got).
"""


def telemetry_dir(data_dir: Path) -> Path:
    return data_dir / "telemetry"


def wallet(data_dir: Path, issuer: Issuer | None = None, *, by_stick: bool = False) -> Wallet:
    """The token wallet; `by_stick`: a token the hub cannot give now is asked for by USB
    stick (edge_agent.telemetry.stick_tokens), for a device without a link."""
    stick = StickTokens(telemetry_dir(data_dir)) if by_stick else None
    return Wallet(telemetry_dir(data_dir) / "tokens.json", issuer, stick)


def transparency_log(config: TelemetryConfig, data_dir: Path) -> TransparencyLog:
    return TransparencyLog(telemetry_dir(data_dir) / "sent.log", config.transparency_log_max_bytes)


def show(config: TelemetryConfig, data_dir: Path, outbox_path: Path | None = None) -> str:
    """What `edge-agent telemetry show` prints: every message kept in the log, decoded,
    each queued one marked sent or still waiting in the outbox at `outbox_path`."""
    waiting = None
    if outbox_path is not None and outbox_path.exists():
        from edge_agent.sync.outbox import Outbox, OutboxKind

        with Outbox(outbox_path) as outbox:
            waiting = {
                item.message_id
                for item in outbox.pending(limit=outbox.max_messages)
                if item.kind is OutboxKind.TELEMETRY
            }
    held = wallet(data_dir).held()
    keys = "".join(f"  {period}: {held[period].public_key}\n" for period in sorted(held))
    return (
        render(transparency_log(config, data_dir).entries(), waiting)
        + VISIBLE_NOTE
        + (
            "\nHub token keys this device was proven (compare them with other devices'):\n" + keys
            if keys
            else ""
        )
    )


@dataclass
class Telemetry:
    collector: Collector
    publisher: Publisher
    marker: RunMarker
    publish_interval_seconds: float = 60.0
    _scheduler: BackgroundScheduler | None = None

    def start(self) -> None:
        """At agent start: detect a crash of the previous run, count the restart, and
        publish closed windows from now on."""
        crashed = self.marker.start()
        self.collector.record_restart(crashed=crashed)
        self._scheduler = new_scheduler()
        self._scheduler.add_job(
            self.publisher.publish_due,
            "interval",
            seconds=self.publish_interval_seconds,
            id="telemetry-publish",
        )
        self._scheduler.start()

    def stop(self) -> None:
        """At a clean stop: hand on the open window too, then mark the stop clean."""
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
            self._scheduler = None
        self.publisher.publish_all()
        self.marker.stop()


def build(
    config: TelemetryConfig,
    *,
    data_dir: Path,
    outbox: Outbox | None,
    agent_version: str,
    execution_provider: str,
    clock: Callable[[], float] = time.time,
    issuer: Issuer | None = None,
) -> Telemetry:
    folder = telemetry_dir(data_dir)
    collector = Collector(config.window_seconds, clock=clock)
    publisher = Publisher(
        collector,
        policy=Policy(config.policy),
        secret=load_or_create_secret(folder / "secret"),
        agent_version=agent_version,
        hardware=hardware_class(execution_provider),
        transparency=transparency_log(config, data_dir),
        outbox=outbox,
        dp_epsilon=config.dp_epsilon,
        budget=(
            PrivacyBudget(folder / "dp-budget.json", config.dp_budget_per_period)
            if config.dp_epsilon is not None
            else None
        ),
        clock=clock,
        tokens=wallet(data_dir, issuer, by_stick=outbox is not None).token_for,
    )
    return Telemetry(
        collector, publisher, RunMarker(folder / "running"), config.publish_interval_seconds
    )

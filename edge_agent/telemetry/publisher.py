"""Closes due windows and hands their reports on, as the policy says.

    off         nothing is collected for sending: closed windows are discarded
    aggregate   (default) reports go into the durable outbox as OutboxKind.TELEMETRY, on the
                shared telemetry topic, in an envelope that names no device
    local-log   reports are made and written to the transparency log, never sent

Every report that is queued or logged is recorded, byte for byte, in the transparency log.
The envelope's sent_at is the window's end, not the wall clock, so the time a device
happened to publish adds nothing to what the report says.

A queued report carries the anonymous token of its pseudonym and period (see
edge_agent.telemetry.tokens), without which the hub refuses it. A window whose period has no
token yet (the hub unreachable) is held and tried again at the next run, before any privacy
budget is spent on it; at a clean stop the held windows are dropped (and logged).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING

from edge_agent.protocol import TELEMETRY_TOPIC, Envelope, HardwareClass, encode
from edge_agent.telemetry.aggregate import ClosedWindow, to_report
from edge_agent.telemetry.collector import Collector
from edge_agent.telemetry.privacy import LaplaceNoise, PrivacyBudget
from edge_agent.telemetry.pseudonym import pseudonym
from edge_agent.telemetry.tokens import TokenSource
from edge_agent.telemetry.transparency import Action, TransparencyLog

if TYPE_CHECKING:  # the outbox brings SQLAlchemy: loaded only where reports are sent
    from edge_agent.sync.outbox import Outbox

log = logging.getLogger(__name__)
# Two weeks of hourly windows: past that, a period is no longer open for issuance anyway.
MAX_HELD_WINDOWS = 336


class Policy(StrEnum):
    OFF = "off"
    AGGREGATE = "aggregate"
    LOCAL_LOG = "local-log"


class Publisher:
    def __init__(
        self,
        collector: Collector,
        *,
        policy: Policy,
        secret: bytes,
        agent_version: str,
        hardware: HardwareClass,
        transparency: TransparencyLog,
        outbox: Outbox | None = None,
        dp_epsilon: float | None = None,
        budget: PrivacyBudget | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
        tokens: TokenSource | None = None,
    ) -> None:
        if policy is Policy.AGGREGATE and outbox is None:
            raise ValueError("telemetry policy aggregate needs an outbox to queue reports in")
        if policy is Policy.AGGREGATE and tokens is None:
            raise ValueError(
                "telemetry policy aggregate needs a token source: the hub refuses reports "
                "without a device token"
            )

        if dp_epsilon is not None and budget is None:
            raise ValueError("differential privacy (dp_epsilon set) needs a privacy budget")
        self.collector = collector
        self.policy = policy
        self.outbox = outbox
        self.transparency = transparency
        self.dp_epsilon = dp_epsilon
        self._secret = secret
        self._agent_version = agent_version
        self._hardware = hardware
        self._budget = budget
        # SystemRandom: noise an observer could predict would protect nothing.
        self._rng = rng if rng is not None else random.SystemRandom()
        self._clock = clock
        self._tokens = tokens
        self._held: list[ClosedWindow] = []  # closed, waiting for their period's token

    def publish_due(self) -> int:
        """Close the windows that have ended and hand on their reports; how many were
        queued or logged. Suitable as a periodic job (run it every few minutes)."""
        return self._publish(self._take_held() + self.collector.close_due())

    def publish_all(self) -> int:
        """Like publish_due, with the open window too: call it at a clean stop."""
        handled = self._publish(self._take_held() + self.collector.close_all())
        if self._held:
            log.warning(
                "telemetry: %d window(s) dropped at stop: no token from the hub for %s",
                len(self._held),
                ", ".join(sorted({w.period for w in self._held})),
            )
            self._held = []
        return handled

    def _take_held(self) -> list[ClosedWindow]:
        held, self._held = self._held, []
        return held

    def _publish(self, windows: list[ClosedWindow]) -> int:
        if self.policy is Policy.OFF:
            return 0
        handled = 0
        for window in windows:
            handled += self._publish_window(window)
        return handled

    def _publish_window(self, window: ClosedWindow) -> int:
        noise: LaplaceNoise | None = None
        action = Action.QUEUED if self.policy is Policy.AGGREGATE else Action.LOGGED
        name = pseudonym(self._secret, window.period)
        token = None
        if action is Action.QUEUED:
            assert self._tokens is not None  # checked in __init__
            token = self._tokens(window.period, name)
            if token is None:  # why is logged by the wallet; tried again next run
                self._held.append(window)
                if len(self._held) > MAX_HELD_WINDOWS:
                    dropped = self._held.pop(0)
                    log.warning("telemetry: window %s dropped: no token came", dropped.start)
                return 0
        if self.dp_epsilon is not None and self._budget is not None:
            if self._budget.try_spend(window.period, self.dp_epsilon):
                noise = LaplaceNoise(self.dp_epsilon, self._rng)
            else:
                action = Action.WITHHELD
                log.info("telemetry for %s withheld: privacy budget spent", window.start)
        sent_at = window.start + timedelta(seconds=window.window_seconds)
        for release, tally in sorted(window.tallies.items(), key=lambda item: item[0] or ()):
            report = to_report(
                window,
                release,
                tally,
                pseudonym=name,
                agent_version=self._agent_version,
                hardware=self._hardware,
                noise=noise,
                dp_epsilon=self.dp_epsilon if noise is not None else None,
                token=token,
            )
            envelope = Envelope.of(report, sent_at=sent_at)
            # Logged before it is queued: the log may show a message that failed to queue,
            # never miss one that went out.
            self.transparency.record(
                action,
                TELEMETRY_TOPIC,
                encode(envelope),
                at=datetime.fromtimestamp(self._clock(), UTC),
            )
            if action is Action.QUEUED:
                assert self.outbox is not None  # checked in __init__
                from edge_agent.sync.link import enqueue

                enqueue(self.outbox, envelope)
        return len(window.tallies) if action is not Action.WITHHELD else 0

"""The device's side of the anonymous token: blinded issuance checked by its proof, one
request a period, kept in a 0600 wallet, attached to every queued report; windows wait
while there is no token, without spending privacy budget."""

from __future__ import annotations

import random
import stat
from pathlib import Path

import pytest

from edge_agent.protocol import TelemetryReport, decode
from edge_agent.protocol.tokens import TokenRequest, TokenResponse
from edge_agent.sync.outbox import Outbox
from edge_agent.telemetry import Collector, Policy, PrivacyBudget, Publisher, TransparencyLog
from edge_agent.telemetry.pseudonym import pseudonym
from edge_agent.telemetry.tokens import TokenUnavailable, Wallet, obtain
from edge_agent.telemetry.transparency import MIN_LOG_BYTES
from hub.telemetry.keys import PeriodKeys, TokenVerifier
from tests.telemetry.issuer import KeyIssuer
from tests.telemetry.test_publisher import HARDWARE, SECRET, T0, WINDOW, Clock, use

WEEK = "2030-W01"


class Offline:
    """A hub that cannot be reached (until `online` is set)."""

    def __init__(self) -> None:
        self.online = False
        self.hub = KeyIssuer()

    def issue(self, request: TokenRequest) -> TokenResponse:
        if not self.online:
            raise TokenUnavailable("the hub cannot be reached")
        return self.hub.issue(request)


class TaggingHub(KeyIssuer):
    """Evaluates with a key of this device's own, naming the period's public key."""

    def issue(self, request: TokenRequest) -> TokenResponse:
        own = PeriodKeys(b"a key for one device, to tag it!")
        return TokenResponse(
            period=request.period,
            public_key=self.keys.public_key(request.period).hex(),
            evaluated=own.evaluate(request.period, bytes.fromhex(request.blinded)).hex(),
        )


def test_the_token_is_the_hubs_evaluation_and_the_hub_never_sees_the_pseudonym() -> None:
    hub = KeyIssuer()
    name = pseudonym(SECRET, WEEK)
    held = obtain(hub, WEEK, name)
    assert held.token == hub.keys.token(WEEK, name).hex()
    assert held.public_key == hub.keys.public_key(WEEK).hex()
    (request,) = hub.requests
    assert name not in request.model_dump_json()


def test_a_hub_that_evaluates_with_a_key_of_its_own_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TokenUnavailable, match="does not verify"):
        obtain(TaggingHub(), WEEK, pseudonym(SECRET, WEEK))
    wallet = Wallet(tmp_path / "tokens.json", TaggingHub())
    assert wallet.token_for(WEEK, pseudonym(SECRET, WEEK)) is None
    assert not (tmp_path / "tokens.json").exists()


def test_one_request_a_period_kept_in_a_private_wallet(tmp_path: Path) -> None:
    hub = KeyIssuer()
    wallet = Wallet(tmp_path / "tokens.json", hub)
    name = pseudonym(SECRET, WEEK)
    first = wallet.token_for(WEEK, name)
    assert first is not None
    assert Wallet(tmp_path / "tokens.json", hub).token_for(WEEK, name) == first  # from disk
    assert len(hub.requests) == 1
    assert stat.S_IMODE((tmp_path / "tokens.json").stat().st_mode) == 0o600
    wallet.token_for("2030-W02", pseudonym(SECRET, "2030-W02"))
    assert [r.period for r in hub.requests] == [WEEK, "2030-W02"]


def test_windows_wait_for_their_token_and_spend_no_budget_meanwhile(
    tmp_path: Path,
) -> None:
    clock, hub = Clock(), Offline()
    with Outbox(tmp_path / "outbox.db") as outbox:
        pub = Publisher(
            Collector(WINDOW, clock=clock),
            policy=Policy.AGGREGATE,
            secret=SECRET,
            agent_version="0.1.0",
            hardware=HARDWARE,
            transparency=TransparencyLog(tmp_path / "sent.log", MIN_LOG_BYTES),
            outbox=outbox,
            dp_epsilon=1.0,
            budget=PrivacyBudget(tmp_path / "budget.json", 1.0),
            rng=random.Random(1),
            clock=clock,
            tokens=Wallet(tmp_path / "tokens.json", hub).token_for,
        )
        use(pub)
        clock.now = T0 + WINDOW + 1
        assert pub.publish_due() == 0  # no token: held
        assert outbox.depth() == 0 and not (tmp_path / "budget.json").exists()
        hub.online = True
        assert pub.publish_due() == 2
        reports = [decode(i.topic, i.payload).payload for i in outbox.pending(10)]
    verifier = TokenVerifier(hub.hub.keys)
    for report in reports:
        assert isinstance(report, TelemetryReport) and report.token is not None
        verifier.check(report)  # the hub's own check passes


def test_aggregate_needs_a_token_source(tmp_path: Path) -> None:
    with (
        Outbox(tmp_path / "outbox.db") as outbox,
        pytest.raises(ValueError, match="needs a token source"),
    ):
        Publisher(
            Collector(WINDOW),
            policy=Policy.AGGREGATE,
            secret=SECRET,
            agent_version="0.1.0",
            hardware=HARDWARE,
            transparency=TransparencyLog(tmp_path / "sent.log", MIN_LOG_BYTES),
            outbox=outbox,
        )

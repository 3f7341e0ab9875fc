"""One device counts once: telemetry needs the anonymous token of an enrolled device.

Real parts throughout: the hub's token route served over loopback HTTP, the device's
issuance client (blinding, proof check) against it, reports published through a real
Mosquitto into the ingest worker, and the rows the hub's database ends up with.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, String, select
from starlette.applications import Starlette

from edge_agent.protocol.telemetry import iso_week
from edge_agent.protocol.tokens import TOKEN_ISSUE_PATH, TokenRequest, TokenResponse
from edge_agent.telemetry.tokens import HubIssuer, TokenUnavailable, obtain
from hub.artifacts.tokens import TokenStore
from hub.telemetry.issuance import TokenIssuer, token_route
from hub.telemetry.models import TELEMETRY, TOKEN_ISSUANCE
from hub.telemetry.query import release_health
from tests.conftest import ServerThread
from tests.hub_ingest.helpers import wait_count, wire
from tests.hub_ingest.test_consumer import consumer
from tests.hub_telemetry.helpers import T0, TOKEN_KEYS, busy, stored
from tests.hub_telemetry.test_ingest import publish, wait_received
from tests.mqtt_broker import MosquittoBroker

WEEK = iso_week(T0)


def invented(n: int) -> str:
    return hashlib.sha256(f"made-up device {n}".encode()).hexdigest()


class Hub:
    """The hub's token route on a real loopback server, with its download tokens."""

    def __init__(self, engine: Engine, tmp_path: Path) -> None:
        self.downloads = TokenStore(tmp_path / "download-tokens.json")
        self.issuer = TokenIssuer(engine, TOKEN_KEYS, clock=lambda: T0.timestamp() + 3600)
        self.server = ServerThread(Starlette(routes=[token_route(self.issuer, self.downloads)]))

    def device(self, device_id: str) -> HubIssuer:
        """The issuance client of an enrolled device (its own download token)."""
        return HubIssuer(self.server.url, self.downloads.issue(device_id))


@pytest.fixture
def hub(engine: Engine, tmp_path: Path) -> Hub:
    return Hub(engine, tmp_path)


def test_one_device_under_six_invented_pseudonyms_counts_once(
    engine: Engine, mqtt_broker: MosquittoBroker, token_seed_file: Path, hub: Hub
) -> None:
    # The attack: an enrolled device asks the hub for a token for each of six invented
    # pseudonyms, then publishes a busy report under each, hoping to pass k = 5.
    with hub.server:
        device = hub.device("site-0")
        tokens: dict[str, str] = {}
        for n in range(6):
            try:
                tokens[invented(n)] = obtain(device, WEEK, invented(n)).token
            except TokenUnavailable as exc:
                assert "token_already_issued" in str(exc)
    assert len(tokens) == 1  # the hub issued one token for the week, and refused the rest
    only = next(iter(tokens.values()))
    reports = [
        busy(0, pseudonym=invented(n), token=tokens.get(invented(n), only)) for n in range(6)
    ]
    with consumer(engine, mqtt_broker, token_seed_file=token_seed_file) as worker:
        publish(mqtt_broker, "site-0", [wire(e) for e in reports])
        wait_received(worker, 6)
    assert dict(worker.stats.refused) == {"InvalidToken": 5}
    assert stored(engine) == 1
    cells = release_health(engine, "chat", k=5)
    assert len(cells) == 1 and cells[0].suppressed  # one device behind it: never shown
    shown = release_health(engine, "chat", k=2)
    assert shown[0].suppressed


def test_reports_without_a_valid_token_are_refused_and_not_stored(
    engine: Engine, mqtt_broker: MosquittoBroker, token_seed_file: Path
) -> None:
    last_week = T0 - timedelta(weeks=1)
    mine = busy(1)
    assert mine.payload.token is not None  # type: ignore[union-attr]
    attacks = [
        busy(2, token=None),  # no token at all
        busy(3, token=secrets.token_hex(64)),  # forged
        # Last week's valid token of the same pseudonym, on this week's report.
        busy(4, token=TOKEN_KEYS.token(iso_week(last_week), busy(4).payload.pseudonym).hex()),  # type: ignore[union-attr]
        # Spent: device 1's token again, on a report under another pseudonym.
        busy(5, token=mine.payload.token),  # type: ignore[union-attr]
    ]
    with consumer(engine, mqtt_broker, token_seed_file=token_seed_file) as worker:
        publish(mqtt_broker, "site-1", [wire(mine), *(wire(e) for e in attacks), wire(mine)])
        wait_received(worker, 6)
    assert dict(worker.stats.refused) == {"MissingToken": 1, "InvalidToken": 3}
    # The retried identical report is a duplicate, not a second device.
    assert (worker.stats.stored, worker.stats.duplicates) == (1, 1)
    with engine.connect() as connection:
        kept = connection.execute(select(TELEMETRY.c.pseudonym)).scalars().all()
    assert kept == [mine.payload.pseudonym]  # type: ignore[union-attr]


def test_without_a_token_key_the_hub_refuses_all_telemetry(
    engine: Engine, mqtt_broker: MosquittoBroker
) -> None:
    with consumer(engine, mqtt_broker) as worker:
        publish(mqtt_broker, "site-1", [wire(busy(1))])
        wait_received(worker, 1)
    assert dict(worker.stats.refused) == {"InvalidToken": 1}
    assert stored(engine) == 0


def test_issuance_once_per_device_and_period_for_enrolled_devices_only(
    engine: Engine, hub: Hub
) -> None:
    with hub.server:
        first = obtain(hub.device("site-1"), WEEK, invented(1))
        assert first.token == TOKEN_KEYS.token(WEEK, invented(1)).hex()
        # A new download token is the same device: still one token a week.
        with pytest.raises(TokenUnavailable, match=r"409.*token_already_issued"):
            obtain(hub.device("site-1"), WEEK, invented(2))
        # Another device, and the same device next period, get theirs.
        obtain(hub.device("site-2"), WEEK, invented(3))
        obtain(hub.device("site-1"), iso_week(T0 - timedelta(weeks=1)), invented(4))
        with pytest.raises(TokenUnavailable, match=r"400.*period_not_open"):
            obtain(hub.device("site-3"), iso_week(T0 + timedelta(weeks=1)), invented(5))
        request = TokenRequest(period=WEEK, blinded="00" * 32).model_dump_json()
        url = hub.server.url + TOKEN_ISSUE_PATH
        anonymous = httpx.post(url, content=request)
        assert anonymous.status_code == 401
        forged = httpx.post(url, content=request, headers={"Authorization": "Bearer guess"})
        assert forged.status_code == 401
    with engine.connect() as connection:
        issued = connection.execute(select(TOKEN_ISSUANCE.c.device_id, TOKEN_ISSUANCE.c.period))
        assert sorted(map(tuple, issued)) == [
            ("site-1", iso_week(T0 - timedelta(weeks=1))),
            ("site-1", WEEK),
            ("site-2", WEEK),
        ]


def test_the_hub_cannot_link_a_report_to_its_issuance_nor_two_periods(
    engine: Engine, mqtt_broker: MosquittoBroker, token_seed_file: Path, hub: Hub
) -> None:
    # A device fetches two weeks' tokens through the real route, recording the blinded
    # elements the hub saw, then reports in both weeks.
    seen_by_hub: list[str] = []

    class Watched(HubIssuer):
        def issue(self, request: TokenRequest) -> TokenResponse:
            seen_by_hub.append(request.blinded)
            return super().issue(request)

    last_week = T0 - timedelta(weeks=1)
    with hub.server:
        device = hub.device("site-7")
        issuer = Watched(device.source, device.download_token)
        names = {WEEK: invented(70), iso_week(last_week): invented(71)}
        held = {week: obtain(issuer, week, name) for week, name in names.items()}
    reports = [busy(7, pseudonym=names[WEEK], token=held[WEEK].token)]
    with consumer(engine, mqtt_broker, token_seed_file=token_seed_file):
        publish(mqtt_broker, "site-7", [wire(e) for e in reports])
        assert wait_count(engine, 1, counter=stored) == 1
    with engine.connect() as connection:
        issuance = {v for row in connection.execute(select(TOKEN_ISSUANCE)) for v in row}
        text = [c for c in TELEMETRY.c if isinstance(c.type, String)]
        report_values = {v for row in connection.execute(select(*text)) for v in row}
    # The issuance records name the device; nothing of theirs is in a report row, and no
    # report value (pseudonym, versions, enums) is in them.
    assert "site-7" in issuance and not ({str(v) for v in issuance} & report_values)
    # What the hub saw at issuance shares nothing with the token or pseudonym it redeems.
    for blinded in seen_by_hub:
        for token in held.values():
            assert blinded not in token.token and blinded[:16] not in token.pseudonym
    # Two periods: other pseudonyms, other tokens, other keys.
    one, two = held.values()
    assert one.token != two.token and one.public_key != two.public_key
    assert one.pseudonym != two.pseudonym
    # Blinding is randomized: the same input never looks the same to the hub twice.
    again: list[str] = []

    class Recorder:
        def issue(self, request: TokenRequest) -> TokenResponse:
            again.append(request.blinded)
            raise TokenUnavailable("recorded only")

    for _ in range(2):
        with pytest.raises(TokenUnavailable):
            obtain(Recorder(), WEEK, invented(70))
    assert again[0] != again[1]

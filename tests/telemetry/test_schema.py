"""The telemetry report is a closed schema of numbers and enums on a topic with no device."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from edge_agent.protocol import (
    MAX_MESSAGE_BYTES,
    TELEMETRY_TOPIC,
    Envelope,
    ErrorClass,
    MalformedMessage,
    TelemetryReport,
    UpdateOutcome,
    WrongTopic,
    decode,
    encode,
    topic_for,
)
from edge_agent.protocol.telemetry import MAX_COUNT, PER_TOKEN_CELLS, TTFT_CELLS

START = datetime(2030, 1, 2, 3, 0, tzinfo=UTC)


def fields(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "pseudonym": "ab" * 32,
        "period": "2030-W01",
        "window_start": START.isoformat(),
        "window_seconds": 3600,
        "model": "tiny",
        "version": "1.2.0",
        "agent_version": "0.1.0",
        "hardware": {"cores": "3-4", "memory": "8-16GiB", "accelerator": "cpu"},
        "requests": 12,
        "tokens_in": 512,
        "tokens_out": 1024,
        "ttft_histogram": [0, 5, 7, 0, 0, 0, 0, 0, 0, 0],
        "per_token_histogram": [0, 0, 12, 0, 0, 0, 0, 0, 0],
        "errors": {"timeout": 5},
        "update_outcomes": {"succeeded": 5},
    }
    data.update(changes)
    return data


def wire(payload: dict[str, Any], **envelope: Any) -> bytes:
    message = {
        "schema_version": 1,
        "message_id": "0b6f1c2e-3d4a-4b5c-8d9e-0f1a2b3c4d5e",
        "kind": "telemetry",
        "sent_at": "2030-01-02T04:00:00Z",
        "device_id": None,
        "payload": payload,
    }
    message.update(envelope)
    return json.dumps(message).encode()


def test_a_report_round_trips_on_the_telemetry_topic() -> None:
    envelope = Envelope.of(TelemetryReport.model_validate(fields()))
    assert topic_for(envelope) == TELEMETRY_TOPIC
    assert envelope.device_id is None
    assert decode(TELEMETRY_TOPIC, encode(envelope)) == envelope


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"hostname": "ws-042"}, "hostname"),
        ({"note": "free text"}, "note"),
        ({"requests": -1}, "requests"),
        ({"requests": "12"}, "requests"),
        ({"requests": 1.5}, "requests"),
        ({"requests": True}, "requests"),
        ({"tokens_in": MAX_COUNT + 1}, "tokens_in"),
        ({"ttft_histogram": [0] * (TTFT_CELLS - 1)}, "ttft_histogram"),
        ({"per_token_histogram": [0] * (PER_TOKEN_CELLS + 1)}, "per_token_histogram"),
        ({"errors": {"user said something rude": 1}}, "errors"),
        ({"errors": {"timeout": -1}}, "errors"),
        ({"update_outcomes": {"exploded": 1}}, "update_outcomes"),
        ({"hardware": {"cores": "7", "memory": "8-16GiB", "accelerator": "cpu"}}, "cores"),
        ({"hardware": {"cores": "2", "memory": "8-16GiB", "accelerator": "tpu"}}, "accelerator"),
        (
            {"hardware": {"cores": "2", "memory": "8-16GiB", "accelerator": "cpu", "host": "x"}},
            "host",
        ),
        ({"model": "C:\\Users\\alice\\model"}, "model"),
        ({"version": "alice's build"}, "version"),
        ({"pseudonym": "alice"}, "pseudonym"),
        ({"period": "last week"}, "period"),
        ({"period": "2030-W02"}, "period"),
        ({"window_start": (START + timedelta(minutes=1)).isoformat()}, "aligned"),
        ({"window_start": "2030-01-02T03:00:00"}, "time zone"),
        ({"window_seconds": 7000}, "divide"),
        ({"window_seconds": 60}, "window_seconds"),
        ({"version": None}, "both"),
        ({"restarts": 5}, "restarts"),
        ({"dp_epsilon": 0}, "dp_epsilon"),
    ],
)
def test_the_schema_is_closed_and_refuses(change: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        TelemetryReport.model_validate(fields(**change))
    with pytest.raises(MalformedMessage):
        decode(TELEMETRY_TOPIC, wire(fields(**change)))


def test_telemetry_naming_a_device_is_refused() -> None:
    with pytest.raises(MalformedMessage, match="must not name a device"):
        decode(TELEMETRY_TOPIC, wire(fields(), device_id="dev-1"))
    with pytest.raises(ValidationError, match="must not name a device"):
        Envelope.of(TelemetryReport.model_validate(fields()), device_id="dev-1")


def test_telemetry_envelope_refuses_extra_fields() -> None:
    with pytest.raises(MalformedMessage, match="no fields beyond"):
        decode(TELEMETRY_TOPIC, wire(fields(), user="alice"))


@pytest.mark.parametrize(
    "topic",
    ["edge/v1/devices/dev-1/reported", "edge/v1/devices/dev-1/events", "edge/v1/telemetry/x"],
)
def test_telemetry_on_another_topic_is_refused(topic: str) -> None:
    with pytest.raises(WrongTopic):
        decode(topic, wire(fields()))


def test_the_largest_report_fits_the_message_limit() -> None:
    big = MAX_COUNT
    report = TelemetryReport.model_validate(
        fields(
            model="m" * 64,
            version="1" * 64,
            agent_version="2" * 64,
            requests=big,
            tokens_in=big,
            tokens_out=big,
            ttft_histogram=[big] * TTFT_CELLS,
            per_token_histogram=[big] * PER_TOKEN_CELLS,
            errors=dict.fromkeys(ErrorClass, big),
            update_outcomes=dict.fromkeys(UpdateOutcome, big),
            rejections=big,
            dp_epsilon=0.123456789,
        )
    )
    # Far below the limit: a closed schema cannot grow.
    assert len(encode(Envelope.of(report))) < MAX_MESSAGE_BYTES // 16


def test_agent_report_names_no_release() -> None:
    report = TelemetryReport.model_validate(
        fields(model=None, version=None, restarts=5, crashes=5, requests=0)
    )
    assert report.model is None

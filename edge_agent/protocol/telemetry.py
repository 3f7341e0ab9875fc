"""The anonymous telemetry report: a CLOSED schema of numbers and enums (promise 7).

Unlike every other wire model (extra="allow", so that older readers survive newer writers),
a telemetry report refuses any field it does not define: a field we do not know is a field
nobody has checked for identifying content. Free text cannot appear anywhere: every string
is an enum value, a validated model name or release version (operator-chosen identifiers),
the rotating pseudonym (64 hex digits) or the ISO week it belongs to.

One report covers one model release (or, with `model` and `version` both None, the agent
itself: restarts, crashes, errors and rejections outside any release) over one aligned
window of `window_seconds` (UTC, dividing a day, so a window never straddles an ISO week).
Reports of the same pseudonym, window and release add up (an agent restarted mid-window
sends the part before the stop and the part after); the hub de-duplicates by the
envelope's message id only. The device computes a report from aggregates only; counts are
coarsened and may carry Laplace noise (`dp_epsilon` set). The rules live in
`edge_agent.telemetry.aggregate` and `edge_agent.telemetry.privacy`:

* Event counts (requests, errors, rejections, histogram cells, loads, outcomes, restarts,
  crashes): 0 stays 0, 1..SMALL_COUNT-1 are reported as SMALL_COUNT, larger counts exactly.
  So a coarsened histogram can sum above `requests` by up to SMALL_COUNT-1 per cell.
* Token totals: rounded up to a multiple of TOKEN_QUANTUM (0 stays 0).

Every report sent to the hub carries `token`: the anonymous proof that its pseudonym belongs
to a distinct enrolled device for that period (see `token_input` and edge_agent.telemetry.tokens).
Reports kept only in the local log may have none; the hub refuses a report without a valid one.

Histogram bucket `i` counts values v with EDGES[i-1] <= v < EDGES[i] (the first bucket has
no lower bound, the last no upper bound), so a histogram has len(EDGES) + 1 cells.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from functools import partial
from typing import Annotated, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from edge_agent.protocol.fields import ModelName, ReleaseVersion, Sha256Hex

TELEMETRY_SCHEMA = 1
# JSON numbers past 2**53 lose precision in many readers (and the hub stores BIGINT).
MAX_COUNT = 2**53 - 1
SMALL_COUNT = 5
TOKEN_QUANTUM = 256
DEFAULT_WINDOW_SECONDS = 3600
MIN_WINDOW_SECONDS = 300
SECONDS_PER_DAY = 86_400

# Fixed bucket edges, in the unit their name says. Changing one is a schema change.
TTFT_EDGES_S: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
PER_TOKEN_EDGES_S: tuple[float, ...] = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
LOAD_EDGES_S: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
PEAK_MEMORY_EDGES_MIB: tuple[float, ...] = (256, 512, 1024, 2048, 4096, 8192, 16384, 32768)

_ISO_WEEK = re.compile(r"[0-9]{4}-W(0[1-9]|[1-4][0-9]|5[0-3])")
# A VOPRF output of ristretto255-SHA512 (RFC 9497): 64 bytes, as lowercase hex.
TOKEN_HEX_CHARS = 128
_TOKEN = re.compile(rf"[0-9a-f]{{{TOKEN_HEX_CHARS}}}")
# Domain separation of the token's input: the hub's period key evaluates nothing else.
TOKEN_CONTEXT = b"edge-fleet telemetry token v1\0"


class ErrorClass(StrEnum):
    """Why a request or load failed, by class; never the message itself."""

    INVALID_REQUEST = "invalid_request"
    CONTEXT_LENGTH = "context_length"
    NOT_READY = "not_ready"
    MODEL_LOAD = "model_load"
    GENERATION = "generation"
    OUT_OF_MEMORY = "out_of_memory"
    TIMEOUT = "timeout"
    INTERNAL = "internal"


class UpdateOutcome(StrEnum):
    # Today the values of messages.UpdateResult, but pinned here: the closed schema must not
    # change because the operational channel's enum grows (and messages imports this module).
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"


class CoresBucket(StrEnum):
    C1 = "1"
    C2 = "2"
    C3_4 = "3-4"
    C5_8 = "5-8"
    C9_16 = "9-16"
    C17_32 = "17-32"
    C33_UP = "33+"


class MemoryBucket(StrEnum):
    UNDER_2_GIB = "<2GiB"
    GIB_2_4 = "2-4GiB"
    GIB_4_8 = "4-8GiB"
    GIB_8_16 = "8-16GiB"
    GIB_16_32 = "16-32GiB"
    GIB_32_64 = "32-64GiB"
    GIB_64_UP = "64GiB+"
    UNKNOWN = "unknown"


class Accelerator(StrEnum):
    CPU = "cpu"
    CUDA = "cuda"
    DML = "dml"
    WEBGPU = "webgpu"
    UNKNOWN = "unknown"


def _iso_week(value: str) -> str:
    if not _ISO_WEEK.fullmatch(value):
        raise ValueError("must be an ISO week such as 2030-W01")
    return value


def _token(value: str) -> str:
    if not _TOKEN.fullmatch(value):
        raise ValueError(f"must be {TOKEN_HEX_CHARS} lowercase hex digits")
    return value


def token_input(period: str, pseudonym: str) -> bytes:
    """What the hub's key for `period` evaluates to make the token of `pseudonym`.

    The token binds the pseudonym: a device is issued one evaluation per period, so it can
    make exactly one pseudonym valid, and a token shown beside any other pseudonym (an
    invented one, another period's) fails verification."""
    return TOKEN_CONTEXT + period.encode() + b"\0" + pseudonym.encode()


def _utc(value: datetime) -> datetime:
    if value.utcoffset() is None:
        raise ValueError("must carry a time zone (UTC)")
    return value.astimezone(UTC)


def iso_week(moment: datetime) -> str:
    """The ISO week of `moment` (UTC) as text, e.g. "2030-W01": the pseudonym's period."""
    year, week, _day = moment.astimezone(UTC).isocalendar()
    return f"{year:04d}-W{week:02d}"


# strict: a count is a JSON integer, never a string, float or boolean.
Count = Annotated[int, Field(ge=0, le=MAX_COUNT, strict=True)]
IsoWeek = Annotated[str, AfterValidator(_iso_week)]
PeriodToken = Annotated[str, AfterValidator(_token)]
TTFT_CELLS = len(TTFT_EDGES_S) + 1
PER_TOKEN_CELLS = len(PER_TOKEN_EDGES_S) + 1
LOAD_CELLS = len(LOAD_EDGES_S) + 1
PEAK_MEMORY_CELLS = len(PEAK_MEMORY_EDGES_MIB) + 1
TtftHistogram = Annotated[list[Count], Field(min_length=TTFT_CELLS, max_length=TTFT_CELLS)]
PerTokenHistogram = Annotated[
    list[Count], Field(min_length=PER_TOKEN_CELLS, max_length=PER_TOKEN_CELLS)
]
LoadHistogram = Annotated[list[Count], Field(min_length=LOAD_CELLS, max_length=LOAD_CELLS)]
PeakMemoryHistogram = Annotated[
    list[Count], Field(min_length=PEAK_MEMORY_CELLS, max_length=PEAK_MEMORY_CELLS)
]


class Closed(BaseModel):
    """Base of the telemetry models: unknown fields refused, instances immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class HardwareClass(Closed):
    cores: CoresBucket
    memory: MemoryBucket
    accelerator: Accelerator


def zeros(cells: int) -> list[int]:
    return [0] * cells


class TelemetryReport(Closed):
    """One model release (or the agent: model and version None) over one window."""

    telemetry_schema: int = Field(default=TELEMETRY_SCHEMA, ge=1, le=TELEMETRY_SCHEMA)
    pseudonym: Sha256Hex  # HMAC-SHA256(device secret, period); rotates every ISO week
    period: IsoWeek
    window_start: Annotated[datetime, AfterValidator(_utc)]
    window_seconds: int = Field(
        default=DEFAULT_WINDOW_SECONDS, ge=MIN_WINDOW_SECONDS, le=SECONDS_PER_DAY, strict=True
    )
    model: ModelName | None = None
    version: ReleaseVersion | None = None
    agent_version: ReleaseVersion
    hardware: HardwareClass
    # Inference: one entry per finished request.
    requests: Count = 0
    tokens_in: Count = 0
    tokens_out: Count = 0
    ttft_histogram: TtftHistogram = Field(default_factory=partial(zeros, TTFT_CELLS))
    per_token_histogram: PerTokenHistogram = Field(default_factory=partial(zeros, PER_TOKEN_CELLS))
    errors: dict[ErrorClass, Count] = Field(default_factory=dict)
    rejections: Count = 0  # refused because the queue was full
    # Model loads: how long, and the peak memory the process reached.
    load_histogram: LoadHistogram = Field(default_factory=partial(zeros, LOAD_CELLS))
    peak_memory_histogram: PeakMemoryHistogram = Field(
        default_factory=partial(zeros, PEAK_MEMORY_CELLS)
    )
    update_outcomes: dict[UpdateOutcome, Count] = Field(default_factory=dict)
    # Agent-wide (only in the report with model None).
    restarts: Count = 0
    crashes: Count = 0  # restarts after which the previous run had not stopped cleanly
    dp_epsilon: float | None = Field(default=None, gt=0, le=100, allow_inf_nan=False)
    # VOPRF(period key, token_input(period, pseudonym)); None only in the local log.
    token: PeriodToken | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if (self.model is None) != (self.version is None):
            raise ValueError("model and version: give both (a release) or neither (the agent)")
        if SECONDS_PER_DAY % self.window_seconds:
            raise ValueError(f"window_seconds: {self.window_seconds} does not divide a day")
        start = self.window_start
        if start.microsecond or int(start.timestamp()) % self.window_seconds:
            raise ValueError(
                f"window_start: {self.window_start.isoformat()} is not aligned to "
                f"{self.window_seconds}-second windows"
            )
        if self.period != iso_week(self.window_start):
            raise ValueError(
                f"period: {self.period} is not the ISO week of window_start "
                f"({iso_week(self.window_start)})"
            )
        if self.model is not None and (self.restarts or self.crashes):
            raise ValueError("restarts and crashes belong in the agent's report (model None)")
        return self

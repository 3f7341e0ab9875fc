"""What an operator asks for when creating a rollout, checked before anything is stored.

Every field has a range; a value outside it is refused with the field's name (the API
answers 400, the CLI names the option). Checks that need the database or the release
repository (is the release listed, does the target hold devices, do fixed wave counts add
up to it) happen in hub.rollouts.store, in the same transaction that stores the rollout.
"""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import pairwise
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge_agent.protocol.window import MaintenanceWindow, check_opens

__all__ = [
    "HealthGates",
    "InstallGates",
    "MaintenanceWindow",
    "Pacing",
    "RolloutSpec",
    "Target",
    "ValidationError",
    "field_errors",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Target(_Strict):
    """Which devices: a group, devices carrying all these tags, or named devices (a device
    matching any of the three is in)."""

    group: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    devices: list[str] = Field(default_factory=list, max_length=100_000)

    @model_validator(mode="after")
    def _something(self) -> Target:
        if self.group is None and not self.tags and not self.devices:
            raise ValueError("the target is empty: name a group, tags or devices")
        return self


class InstallGates(_Strict):
    """Gates on install results of a wave's devices (from reported state and install
    events). Ratios are of the wave's devices."""

    min_success_ratio: float = Field(0.9, ge=0, le=1)
    max_failures: int | None = Field(None, ge=0, description="a count of failed devices")
    max_failure_ratio: float | None = Field(0.1, ge=0, le=1)
    max_timed_out_ratio: float = Field(1.0, ge=0, le=1)
    min_reported: int = Field(1, ge=0, description="devices that must have a result")


class HealthGates(_Strict):
    """Gates on the release's anonymous telemetry against the release it replaces, over the
    same period (since the wave opened). None switches a gate off. A suppressed cell (fewer
    than k devices) makes the gate inconclusive, which pauses."""

    max_error_rate_increase: float | None = Field(
        None, ge=0, le=1, description="errors per request, absolute, e.g. 0.01 = 1 point"
    )
    max_ttft_p95_regression: float | None = Field(
        None, ge=0, le=100, description="relative, 0.25 = 25% slower"
    )
    max_per_token_p95_regression: float | None = Field(None, ge=0, le=100)
    max_tokens_per_second_drop: float | None = Field(None, ge=0, le=1)
    max_crash_rate_increase: float | None = Field(
        None, ge=0, le=1000, description="crashes per device-hour, absolute"
    )

    @property
    def enabled(self) -> bool:
        return any(value is not None for value in self.model_dump().values())


class Pacing(_Strict):
    """At most `per_minute` devices notified in a wave's first minute, then `per_minute *
    increment_factor**m` in its minute m (AWS IoT Jobs' exponential rate)."""

    per_minute: int = Field(1000, ge=1, le=1_000_000)
    increment_factor: float = Field(1.0, ge=1, le=10)


class RolloutSpec(_Strict):
    model: str = Field(min_length=1, max_length=64)
    version: str = Field(min_length=1, max_length=64)
    target: Target
    # Cumulative percentages of the target, ascending, ending at 100 (1, 10, 50, 100) ...
    wave_percent: list[float] | None = Field(None, min_length=1, max_length=20)
    # ... or fixed device counts per wave, which must add up to the target's size.
    wave_counts: list[int] | None = Field(None, min_length=1, max_length=20)
    install: InstallGates = InstallGates()
    health: HealthGates = HealthGates()
    baseline_version: str | None = Field(
        None,
        max_length=64,
        description="the release it replaces (default: the one most "
        "target devices are assigned now)",
    )
    soak_seconds: int = Field(600, ge=0, le=30 * 86400)
    device_timeout_seconds: int = Field(86400, ge=1, le=90 * 86400)
    approval_required: bool = False
    on_failure: Literal["pause", "rollback"] = "pause"
    pacing: Pacing = Pacing()
    # Devices activate only inside it (enforced on the device from its signed desired
    # state); None: each device's group window, if its group has one.
    window: MaintenanceWindow | None = None
    seed: int | None = Field(None, ge=0, description="the draw's seed (default: random)")

    @model_validator(mode="after")
    def _waves(self) -> RolloutSpec:
        if (self.wave_percent is None) == (self.wave_counts is None):
            raise ValueError("give either wave_percent (e.g. 1,10,50,100) or wave_counts")
        if self.wave_percent is not None:
            steps = self.wave_percent
            if any(not 0 < p <= 100 for p in steps):
                raise ValueError("wave_percent: each wave is above 0 and at most 100")
            if any(b <= a for a, b in pairwise(steps)):
                raise ValueError("wave_percent: cumulative percentages must ascend")
            if steps[-1] != 100:
                raise ValueError("wave_percent: the waves do not add up: the last must be 100")
        if self.wave_counts is not None and any(n < 1 for n in self.wave_counts):
            raise ValueError("wave_counts: each wave holds at least one device")
        if self.window is not None:
            try:
                check_opens(self.window, datetime.now(UTC))
            except ValueError as exc:
                raise ValueError(f"window: {exc}") from None
        return self


def field_errors(exc: ValidationError) -> list[dict[str, str]]:
    """Each problem with the field it concerns (a whole-object check names its object,
    or the field its message starts with)."""
    found = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        head = message.split(":", 1)[0]
        if head in RolloutSpec.model_fields:
            where = f"{where}.{head}" if where else head
        found.append({"field": where or "body", "message": message})
    return found

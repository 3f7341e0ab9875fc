"""The stub runtime of a simulated device: how its installs and its requests behave.

Each device has a `DeviceProfile`; the dials are per device, so one fleet can hold a few
devices whose installs fail among many healthy ones, or a release that installs everywhere
but answers badly. A profile may also be set per release (`by_version`), which is how a
"bad release" is simulated: the same devices, worse numbers once they run it.
Randomness comes from a seeded `random.Random` per device, so a run can be repeated.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

from packaging.version import Version

from edge_agent.updates.errors import Refused
from edge_agent.updates.rollback import check_rollback, is_rollback


@dataclass(frozen=True)
class Behaviour:
    install_failure_rate: float = 0.0  # share of installs that fail
    install_latency_s: float = 0.0  # from verified desired state to the install's result
    error_rate: float = 0.0  # share of requests that fail (telemetry)
    ttft_s: float = 0.15  # time to first token reported for each request
    per_token_s: float = 0.02
    crash_rate: float = 0.0  # share of telemetry windows with an agent crash

    def __post_init__(self) -> None:
        for name in ("install_failure_rate", "error_rate", "crash_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        for name in ("install_latency_s", "ttft_s", "per_token_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")


@dataclass(frozen=True)
class DeviceProfile:
    """A device's behaviour, and overrides for given release versions."""

    default: Behaviour = field(default_factory=Behaviour)
    by_version: dict[str, Behaviour] = field(default_factory=dict)

    def for_version(self, version: str | None) -> Behaviour:
        if version is None:
            return self.default
        return self.by_version.get(version, self.default)

    def with_version(self, version: str, **dials: float) -> DeviceProfile:
        """This profile with `version` behaving like the default changed by `dials`."""
        behaviour = replace(self.for_version(version), **dials)
        return replace(self, by_version={**self.by_version, version: behaviour})


class StubRuntime:
    """What a simulated device runs: the active version per model, and installs that take
    `install_latency_s` and fail with `install_failure_rate`. It keeps the agent's version
    floor and decides a rollback below it with the agent's own rule."""

    def __init__(self, profile: DeviceProfile, rng: random.Random) -> None:
        self.profile = profile
        self.rng = rng
        self.active: dict[str, str] = {}
        self.previous: dict[str, str] = {}
        self.floor: dict[str, str] = {}  # model -> lowest version it may run

    def install_latency(self, version: str) -> float:
        return self.profile.for_version(version).install_latency_s

    def install(self, model: str, version: str, rolled_back_from: str | None = None) -> str | None:
        """Install `version`: the error text when it fails or is refused (the old version
        stays active), None when it is now active. Below the floor only a signed rollback
        (`rolled_back_from`) re-activates the kept previous version, as on the agent."""
        floor = self.floor.get(model)
        if is_rollback(version, Version(floor) if floor else None):
            try:
                check_rollback(
                    model, version, rolled_back_from=rolled_back_from,
                    active=self.active.get(model), previous=self.previous.get(model),
                )  # fmt: skip
            except Refused as exc:
                return str(exc)
            self.floor[model] = version
            self.active[model] = version
            del self.previous[model]
            return None
        behaviour = self.profile.for_version(version)
        if self.rng.random() < behaviour.install_failure_rate:
            return f"{model} {version}: simulated install failure (health check failed)"
        if model in self.active:
            self.previous[model] = self.active[model]
        self.active[model] = version
        if floor is None or Version(version) > Version(floor):
            self.floor[model] = version  # healthy: the floor rises, as the agent's
        return None

    def request_failed(self, model: str) -> bool:
        behaviour = self.profile.for_version(self.active.get(model))
        return self.rng.random() < behaviour.error_rate

    def behaviour(self, model: str) -> Behaviour:
        return self.profile.for_version(self.active.get(model))

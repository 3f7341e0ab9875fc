"""The plan of a rollout: devices drawn in a random but recorded order (a seed), cut into
waves; and how many of a wave's devices may be notified by a given moment (pacing)."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from hub.rollouts.spec import Pacing


class PlanError(ValueError):
    """Waves that do not fit the target; `field` names what to change."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def draw(device_ids: Sequence[str], seed: int) -> list[str]:
    """The devices in the order the waves take them: the same seed draws the same order."""
    order = sorted(set(device_ids))
    random.Random(seed).shuffle(order)
    return order


def wave_sizes(
    total: int, percent: Sequence[float] | None = None, counts: Sequence[int] | None = None
) -> list[int]:
    """Devices per wave. Percentages are cumulative and rounded up, so a 1% first wave of
    50 devices still holds one; waves that would be empty are dropped."""
    if total < 1:
        raise PlanError("target", "the target holds no device (enrolled and not revoked)")
    if counts is not None:
        if sum(counts) != total:
            raise PlanError(
                "wave_counts",
                f"the waves do not add up: wave_counts sum to {sum(counts)}, the target holds "
                f"{total} devices",
            )
        return list(counts)
    if percent is None:
        raise PlanError("wave_percent", "give wave_percent or wave_counts")
    sizes, taken = [], 0
    for share in percent:
        upto = min(total, math.ceil(round(total * share / 100, 9)))
        if upto > taken:
            sizes.append(upto - taken)
            taken = upto
    return sizes


def notify_budget(pacing: Pacing, seconds_open: float) -> int:
    """How many devices of a wave may have been notified `seconds_open` after it opened:
    per_minute in the first minute, times increment_factor for each minute after."""
    minute = max(0, math.floor(seconds_open / 60))
    rate, allowed = float(pacing.per_minute), 0.0
    for _ in range(min(minute, 1000) + 1):
        allowed += rate
        rate *= pacing.increment_factor
        if allowed >= 1e12:
            break
    return int(min(allowed, 1e12))

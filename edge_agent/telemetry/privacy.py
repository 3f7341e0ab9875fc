"""Optional local differential privacy for the counts of a report (Laplace mechanism).

Off unless `dp_epsilon` is configured. When on, every window's reports are noised before
they are coarsened, and the window spends `epsilon` from the budget of its period (the ISO
week the pseudonym belongs to):

* One event (a request, an error, a rejection, a load, an update outcome, a restart) lands
  in exactly one report of a window (parallel composition: reports of one window spend
  epsilon once). Half of epsilon protects event counts, whose L1 sensitivity is
  COUNT_SENSITIVITY (a request adds 1 to `requests` and to one cell of each histogram);
  the other half protects the token totals, with sensitivity TOKEN_SENSITIVITY: a request
  of up to that many tokens in plus out is covered by epsilon, a longer one proportionally
  less.
* Noisy values are rounded and clamped at 0 (post-processing costs no privacy).
* Budget: a period may spend at most `budget_per_period`. Once what is left is less than
  epsilon, the windows of the rest of that period are WITHHELD: not sent at all (neither
  noisy nor exact), recorded as withheld in the transparency log. The next period starts
  with a full budget. The spent amount is persisted, so a restart does not refill it.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from edge_agent.atomic import write_atomic

COUNT_SENSITIVITY = 3
TOKEN_SENSITIVITY = 2048


def laplace(scale: float, rng: random.Random) -> float:
    """One draw of Laplace(0, scale): the difference of two exponentials of mean `scale`."""
    rate = 1.0 / scale
    return rng.expovariate(rate) - rng.expovariate(rate)


class LaplaceNoise:
    """The `noise` callable of aggregate.to_report for one report at `epsilon`."""

    def __init__(self, epsilon: float, rng: random.Random) -> None:
        if not epsilon > 0:
            raise ValueError(f"dp epsilon must be positive, got {epsilon}")
        self.epsilon = epsilon
        self._rng = rng
        half = epsilon / 2
        self._scales = {"count": COUNT_SENSITIVITY / half, "tokens": TOKEN_SENSITIVITY / half}

    def __call__(self, value: int, kind: str) -> int:
        return max(0, round(value + laplace(self._scales[kind], self._rng)))


class PrivacyBudget:
    """Epsilon spent per period, persisted in a small JSON file."""

    def __init__(self, path: Path, budget_per_period: float) -> None:
        if not budget_per_period > 0:
            raise ValueError(f"dp budget per period must be positive, got {budget_per_period}")
        self.path = path
        self.budget_per_period = budget_per_period
        self._period, self._spent = self._load()

    def _load(self) -> tuple[str | None, float]:
        try:
            data = json.loads(self.path.read_text())
            return str(data["period"]), float(data["spent"])
        except FileNotFoundError:
            return None, 0.0
        except (ValueError, KeyError, TypeError):
            # Unreadable: the budget counts as spent for the period first asked about,
            # rather than refilled (see spent()).
            return None, float("inf")

    def spent(self, period: str) -> float:
        if self._period is None and self._spent:
            self._period = period
        return self._spent if period == self._period else 0.0

    def try_spend(self, period: str, epsilon: float) -> bool:
        """Spend `epsilon` in `period` if the budget allows; False: withhold the window."""
        spent = self.spent(period)
        if spent + epsilon > self.budget_per_period + 1e-12:
            return False
        self._period, self._spent = period, spent + epsilon
        write_atomic(
            self.path, json.dumps({"period": period, "spent": self._spent}).encode(), mode=0o600
        )
        return True

"""What the device's user decided about agent self-updates: deferred until a time, or
pinned to a version. Kept in the state folder, shown by `status`, `doctor` and reported."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from edge_agent.atomic import write_atomic

POLICY_FILE = "self-update.json"
MAX_DEFER = timedelta(days=90)
_DURATION = re.compile(r"^(\d+)([mhd])$")


@dataclass
class SelfUpdatePolicy:
    deferred_until: str | None = None  # ISO time
    pinned: str | None = None

    def blocks(self, version: str, now: datetime) -> str | None:
        """Why `version` may not install now, or None."""
        if self.pinned is not None and version != self.pinned:
            return f"the agent is pinned to {self.pinned} (edge-agent self-update --unpin)"
        if self.deferred_until and datetime.fromisoformat(self.deferred_until) > now:
            return f"self-updates are deferred until {self.deferred_until}"
        return None

    def hold(self, now: datetime) -> str | None:
        """What the device's user holds back now, said for the operator, or None."""
        if self.pinned is not None:
            return f"pinned to {self.pinned} on the device (edge-agent self-update --unpin)"
        if self.deferred_until and datetime.fromisoformat(self.deferred_until) > now:
            return f"self-updates deferred on the device until {self.deferred_until}"
        return None


def parse_duration(text: str) -> timedelta:
    found = _DURATION.match(text.strip())
    if not found:
        raise ValueError(f"{text!r} is not a duration: write e.g. 30m, 12h or 7d")
    amount, unit = int(found[1]), found[2]
    delta = {"m": timedelta(minutes=amount), "h": timedelta(hours=amount)}.get(
        unit, timedelta(days=amount)
    )
    if delta > MAX_DEFER:
        raise ValueError(f"a deferral is at most {MAX_DEFER.days}d; the fleet must be able to act")
    return delta


def load_policy(data_dir: Path) -> SelfUpdatePolicy:
    path = data_dir / POLICY_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return SelfUpdatePolicy()
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is unreadable ({exc}); remove it to clear the policy") from exc
    return SelfUpdatePolicy(raw.get("deferred_until"), raw.get("pinned"))


def save_policy(data_dir: Path, policy: SelfUpdatePolicy) -> None:
    write_atomic(data_dir / POLICY_FILE, json.dumps(asdict(policy), indent=2).encode())


def defer(data_dir: Path, duration: str, now: datetime | None = None) -> SelfUpdatePolicy:
    policy = load_policy(data_dir)
    until = (now or datetime.now(UTC)) + parse_duration(duration)
    policy.deferred_until = until.isoformat(timespec="seconds")
    save_policy(data_dir, policy)
    return policy

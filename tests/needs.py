"""What a test needs from the machine. scripts/setup installs all of it (as root), so a
missing piece fails the test with the fix to apply; it never skips a real case silently."""

from __future__ import annotations

import pytest


def need(present: bool, what: str) -> None:
    """Fail the calling test, naming `what` is missing and how to get it, unless `present`."""
    if not present:
        pytest.fail(what, pytrace=False)

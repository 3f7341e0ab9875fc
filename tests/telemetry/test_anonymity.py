"""The pseudonym rotates weekly and needs the secret; the Laplace noise and its budget."""

from __future__ import annotations

import hashlib
import random
import stat
import statistics
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from edge_agent.protocol import iso_week
from edge_agent.telemetry.privacy import (
    COUNT_SENSITIVITY,
    LaplaceNoise,
    PrivacyBudget,
    laplace,
)
from edge_agent.telemetry.pseudonym import (
    SECRET_BYTES,
    SecretFileError,
    load_or_create_secret,
    pseudonym,
)

secrets_ = st.binary(min_size=SECRET_BYTES, max_size=SECRET_BYTES)
moments = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)


@given(secrets_, moments, st.integers(0, 6 * 24 * 3600))
def test_pseudonym_is_stable_within_a_week(secret: bytes, moment: datetime, later: int) -> None:
    monday = (moment - timedelta(days=moment.weekday())).replace(hour=0, minute=0, second=0)
    same_week = monday + timedelta(seconds=later)
    assert iso_week(monday) == iso_week(same_week)
    assert pseudonym(secret, iso_week(monday)) == pseudonym(secret, iso_week(same_week))


@given(secrets_, moments, st.integers(1, 520))
def test_pseudonym_differs_across_weeks(secret: bytes, moment: datetime, weeks: int) -> None:
    other = moment + timedelta(weeks=weeks)
    assert pseudonym(secret, iso_week(moment)) != pseudonym(secret, iso_week(other))


@given(secrets_, secrets_, moments)
def test_pseudonym_needs_the_secret(secret: bytes, guess: bytes, moment: datetime) -> None:
    assume(any(secret))  # HMAC pads keys with zeros: all-zero equals the empty key
    period = iso_week(moment)
    name = pseudonym(secret, period)
    assert len(name) == 64 and int(name, 16) >= 0
    if guess != secret:
        assert pseudonym(guess, period) != name
    # Nothing public about the period alone gives it away.
    assert name != hashlib.sha256(period.encode()).hexdigest()
    assert name not in {pseudonym(b"", period), pseudonym(b"\0" * SECRET_BYTES, period)}


def test_secret_is_made_once_private_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "telemetry" / "secret"
    secret = load_or_create_secret(path)
    assert len(secret) == SECRET_BYTES
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_secret(path) == secret
    assert load_or_create_secret(tmp_path / "other") != secret


def test_secret_readable_by_others_is_made_private(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b"k" * SECRET_BYTES)
    path.chmod(0o644)
    assert load_or_create_secret(path) == b"k" * SECRET_BYTES
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_damaged_secret_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b"short")
    with pytest.raises(SecretFileError, match="5 bytes, expected 32"):
        load_or_create_secret(path)


def test_laplace_noise_has_the_right_mean_and_variance() -> None:
    rng = random.Random(1234)
    scale = 4.0
    draws = [laplace(scale, rng) for _ in range(200_000)]
    # Laplace(0, b): mean 0, variance 2 b^2 = 32. Bounds are several standard errors wide.
    assert abs(statistics.fmean(draws)) < 0.1
    assert 30.5 < statistics.pvariance(draws) < 33.5
    # Symmetric, and heavier-tailed than a normal of the same variance would be in the body.
    assert abs(sum(d > 0 for d in draws) / len(draws) - 0.5) < 0.01


def test_noisy_counts_are_unbiased_before_clamping() -> None:
    epsilon = 1.0
    noise = LaplaceNoise(epsilon, random.Random(7))
    draws = [noise(1000, "count") for _ in range(50_000)]
    scale = COUNT_SENSITIVITY / (epsilon / 2)
    assert abs(statistics.fmean(draws) - 1000) < 0.2
    assert abs(statistics.pvariance(draws) - 2 * scale**2) < 0.1 * 2 * scale**2
    assert min(LaplaceNoise(epsilon, random.Random(8))(0, "count") for _ in range(1000)) == 0


def test_budget_is_spent_per_period_and_persisted(tmp_path: Path) -> None:
    path = tmp_path / "budget.json"
    budget = PrivacyBudget(path, budget_per_period=2.5)
    assert budget.try_spend("2030-W01", 1.0)
    assert budget.try_spend("2030-W01", 1.0)
    assert not budget.try_spend("2030-W01", 1.0)  # 3.0 would exceed 2.5
    assert not PrivacyBudget(path, 2.5).try_spend("2030-W01", 1.0)  # a restart keeps it spent
    assert PrivacyBudget(path, 2.5).try_spend("2030-W02", 1.0)  # a new week, a new budget


def test_unreadable_budget_counts_as_spent_for_the_current_period(tmp_path: Path) -> None:
    path = tmp_path / "budget.json"
    path.write_text("{not json")
    budget = PrivacyBudget(path, 5.0)
    assert not budget.try_spend("2030-W01", 1.0)
    assert budget.try_spend("2030-W02", 1.0)

"""The rollout driver as a job of the serving hub (hub.service) and its parts for the API."""

from __future__ import annotations

from collections.abc import Callable

from apscheduler.schedulers.background import BackgroundScheduler
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine

from hub.registry.repository import ReleaseRepository
from hub.rollouts.driver import Driver
from hub.rollouts.health import telemetry_query
from hub.rollouts.releases import repository_check

JOB_ID = "rollouts"


def make_driver(
    engine: Engine,
    key: Callable[[], Ed25519PrivateKey],
    repository: ReleaseRepository,
    k_anonymity: int,
    on_signed: Callable[[], None] = lambda: None,
) -> Driver:
    return Driver(
        engine,
        key,
        repository_check(repository),
        telemetry_query(engine, k_anonymity),
        on_signed=on_signed,
    )


def add_rollout_job(scheduler: BackgroundScheduler, driver: Driver, seconds: float) -> None:
    """Every `seconds`, one step of each active rollout (never two runs at once)."""
    scheduler.add_job(
        driver.step_all, "interval", seconds=seconds, id=JOB_ID, max_instances=1, coalesce=True
    )

"""A daily summary of telemetry, so a year of it is read from 365 rows a release.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-28 10:00:00

telemetry_daily holds per release and UTC day what a day cell adds up, with the day's
distinct pseudonym count; telemetry_daily_days says which days it holds completely. An
index on window_hour lets the roll-up read one day of every model. The columns are written
out (as in 0003) so that this revision stays what it was when the protocol changes.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

COUNTERS = ("requests", "tokens_in", "tokens_out", "rejections", "restarts", "crashes")
ERRORS = (
    "invalid_request",
    "context_length",
    "not_ready",
    "model_load",
    "generation",
    "out_of_memory",
    "timeout",
    "internal",
)
OUTCOMES = ("succeeded", "failed", "rolled_back")
HISTOGRAM_CELLS = {"ttft": 10, "per_token": 9, "load": 9, "peak_memory": 9}


def _counts() -> list[sa.Column[int]]:
    names = [
        *COUNTERS,
        *(f"errors_{e}" for e in ERRORS),
        *(f"updates_{o}" for o in OUTCOMES),
        *(f"{h}_{i:02d}" for h, cells in HISTOGRAM_CELLS.items() for i in range(cells)),
    ]
    return [sa.Column(name, sa.BigInteger(), nullable=False) for name in names]


def upgrade() -> None:
    op.create_index(
        "ix_telemetry_reports_window_hour", "telemetry_reports", ["window_hour"], unique=False
    )
    op.create_table(
        "telemetry_daily",
        sa.Column("model", sa.String(length=64), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("day", sa.Integer(), nullable=False),
        sa.Column("devices", sa.Integer(), nullable=False),
        sa.Column("reports", sa.Integer(), nullable=False),
        sa.Column("seconds", sa.BigInteger(), nullable=False),
        sa.Column("dp_epsilon", sa.Float(), nullable=True),
        *_counts(),
        sa.PrimaryKeyConstraint("model", "version", "day", name=op.f("pk_telemetry_daily")),
    )
    op.create_table(
        "telemetry_daily_days",
        sa.Column("day", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("fresh", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("day", name=op.f("pk_telemetry_daily_days")),
    )


def downgrade() -> None:
    op.drop_table("telemetry_daily_days")
    op.drop_table("telemetry_daily")
    op.drop_index("ix_telemetry_reports_window_hour", table_name="telemetry_reports")

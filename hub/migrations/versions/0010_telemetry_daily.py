"""A daily summary of telemetry, so a year of it is read from 365 rows a release.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-28 10:00:00

telemetry_daily holds per release and UTC day what a day cell adds up, with the day's
distinct pseudonym count; telemetry_daily_days says which days it holds completely. An
index on window_hour lets the roll-up read one day of every model. The count columns are
0003's (not the protocol's constants), so this revision stays what it was when those change.
"""

from __future__ import annotations

import importlib

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# The summary has one column per count column of the reports, as 0003 made them (a later
# revision that changes those changes both tables).
_reports = importlib.import_module("hub.migrations.versions.0003_telemetry")


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
        *_reports._counts(),
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

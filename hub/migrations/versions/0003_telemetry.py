"""Anonymous telemetry: one row per report, by model release and window, never by device.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 12:00:00

The columns are written out here (not derived from the protocol's constants) so that this
revision stays what it was when the protocol's histogram edges or enums change: a change
there needs a new revision, and the schema test says so.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
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
    op.create_table(
        "telemetry_reports",
        sa.Column("message_id", sa.String(length=36), nullable=False),
        sa.Column("pseudonym", sa.String(length=64), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_hour", sa.Integer(), nullable=False),
        sa.Column("window_seconds", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=64), nullable=True),
        sa.Column("version", sa.String(length=64), nullable=True),
        sa.Column("agent_version", sa.String(length=64), nullable=False),
        sa.Column("hardware_cores", sa.String(length=16), nullable=False),
        sa.Column("hardware_memory", sa.String(length=16), nullable=False),
        sa.Column("hardware_accelerator", sa.String(length=16), nullable=False),
        *_counts(),
        sa.Column("dp_epsilon", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("message_id", name=op.f("pk_telemetry_reports")),
    )
    with op.batch_alter_table("telemetry_reports", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_telemetry_reports_model_version_window_hour"),
            ["model", "version", "window_hour"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_telemetry_reports_pseudonym_window_start"),
            ["pseudonym", "window_start"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("telemetry_reports", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_telemetry_reports_pseudonym_window_start"))
        batch_op.drop_index(batch_op.f("ix_telemetry_reports_model_version_window_hour"))
    op.drop_table("telemetry_reports")

"""Anonymous telemetry tokens: which device was issued its token for which period.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 07:00:00

One row per (device, ISO week) limits a device to one token a period. The row holds no
blinded element and no output, so it cannot be matched with any stored report.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "telemetry_token_issuance",
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("period", sa.String(length=8), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("device_id", "period", name=op.f("pk_telemetry_token_issuance")),
    )


def downgrade() -> None:
    op.drop_table("telemetry_token_issuance")

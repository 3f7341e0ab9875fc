"""Indexes for the rollout driver's queries at fleet scale.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-28 12:00:00

install_events had no index on its device: a wave's results (an EXISTS per member) scanned
the whole table for each device. rollout_devices is read by rollout and wave, in draw order.
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_install_events_device_id_model_version",
        "install_events",
        ["device_id", "model", "version"],
        unique=False,
    )
    op.create_index(
        "ix_rollout_devices_rollout_id_wave_position",
        "rollout_devices",
        ["rollout_id", "wave", "position"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_rollout_devices_rollout_id_wave_position", table_name="rollout_devices")
    op.drop_index("ix_install_events_device_id_model_version", table_name="install_events")

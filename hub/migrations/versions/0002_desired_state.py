"""Desired state per device: the newest signed state and whether the broker holds it.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 00:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "desired_states",
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("models", sa.JSON(), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires", sa.DateTime(timezone=True), nullable=False),
        sa.Column("signed", sa.Text(), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name=op.f("fk_desired_states_device_id_devices"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("device_id", name=op.f("pk_desired_states")),
    )
    with op.batch_alter_table("desired_states", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_desired_states_expires"), ["expires"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("desired_states", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_desired_states_expires"))
    op.drop_table("desired_states")

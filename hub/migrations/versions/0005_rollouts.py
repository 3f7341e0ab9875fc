"""Rollouts: rollouts, their waves, per-device membership, gate decisions, and the audit log.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 08:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_TIME = sa.DateTime(timezone=True)


def _rollout_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["rollout_id"],
        ["rollouts.id"],
        name=op.f(f"fk_{table}_rollout_id_rollouts"),
        ondelete="CASCADE",
    )


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", _TIME, nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("object", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    op.create_index(op.f("ix_audit_log_at"), "audit_log", ["at"], unique=False)
    op.create_index(op.f("ix_audit_log_object"), "audit_log", ["object"], unique=False)
    op.create_table(
        "rollouts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=64), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("baseline_version", sa.String(length=64), nullable=True),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("wave", sa.Integer(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.Column("waiting_for", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollouts")),
    )
    op.create_index(op.f("ix_rollouts_model"), "rollouts", ["model"], unique=False)
    op.create_index(op.f("ix_rollouts_state"), "rollouts", ["state"], unique=False)
    op.create_table(
        "rollout_gates",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("rollout_id", sa.Integer(), nullable=False),
        sa.Column("wave", sa.Integer(), nullable=False),
        sa.Column("at", _TIME, nullable=False),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        sa.Column("values", sa.JSON(), nullable=False),
        _rollout_fk("rollout_gates"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollout_gates")),
    )
    op.create_index(
        op.f("ix_rollout_gates_rollout_id"), "rollout_gates", ["rollout_id"], unique=False
    )
    op.create_table(
        "rollout_waves",
        sa.Column("rollout_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("opened_at", _TIME, nullable=True),
        sa.Column("notified_at", _TIME, nullable=True),
        sa.Column("approved_by", sa.String(length=64), nullable=True),
        sa.Column("approved_at", _TIME, nullable=True),
        sa.Column("override_by", sa.String(length=64), nullable=True),
        sa.Column("passed_at", _TIME, nullable=True),
        sa.Column("gates", sa.JSON(), nullable=False),
        _rollout_fk("rollout_waves"),
        sa.PrimaryKeyConstraint("rollout_id", "number", name=op.f("pk_rollout_waves")),
    )
    op.create_table(
        "rollout_devices",
        sa.Column("rollout_id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("wave", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("previous_version", sa.String(length=64), nullable=True),
        sa.Column("notified_at", _TIME, nullable=True),
        sa.Column("rolled_back_at", _TIME, nullable=True),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name=op.f("fk_rollout_devices_device_id_devices"),
            ondelete="CASCADE",
        ),
        _rollout_fk("rollout_devices"),
        sa.PrimaryKeyConstraint("rollout_id", "device_id", name=op.f("pk_rollout_devices")),
    )
    op.create_index(
        op.f("ix_rollout_devices_device_id"), "rollout_devices", ["device_id"], unique=False
    )


def downgrade() -> None:
    op.drop_table("rollout_devices")
    op.drop_table("rollout_waves")
    op.drop_table("rollout_gates")
    op.drop_table("rollouts")
    op.drop_table("audit_log")

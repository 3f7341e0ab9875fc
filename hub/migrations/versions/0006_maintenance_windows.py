"""Maintenance windows: a group's window, and the window a signed desired state carries.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28 08:30:00

Both nullable: groups and desired states from before have no window (activate at once).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("groups") as batch:
        batch.add_column(sa.Column("window", sa.JSON(), nullable=True))
    with op.batch_alter_table("desired_states") as batch:
        batch.add_column(sa.Column("window", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("desired_states") as batch:
        batch.drop_column("window")
    with op.batch_alter_table("groups") as batch:
        batch.drop_column("window")

"""Reported state says why a device's user holds a release back (a pinned or deferred
agent self-update), so the operator sees why a device does not follow its rollout.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28 09:00:00

Nullable: reports from before, and every release nobody holds, have none.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("reported_state") as batch:
        batch.add_column(sa.Column("held", sa.String(length=2000), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("reported_state") as batch:
        batch.drop_column("held")

"""Thresholds per class: a multi-class model keeps one active threshold (and history) per class.

Existing rows are a binary model's: they get the empty class name, which is what a binary model
reads and writes, so nothing a binary model relies on changes. The active thresholds' primary key
gains the class; neither SQLite nor a portable ALTER changes a key in place, so the table is
copied into a new one with the new key (on both databases, the same statements).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

COLUMNS = "model, digest, value, source, calibration_id, updated"


def upgrade() -> None:
    """Add the class to the active thresholds' key and to the history."""
    op.create_table(
        "active_thresholds_by_class",
        sa.Column("model", sa.Text, primary_key=True),
        sa.Column("digest", sa.Text, primary_key=True),
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("calibration_id", sa.Text, sa.ForeignKey("calibrations.id")),
        sa.Column("updated", sa.Text, nullable=False),
        # Last, so a first release's rows read back as they were with the class after them.
        sa.Column("class_name", sa.Text, primary_key=True, server_default=sa.text("''")),
        sa.CheckConstraint("source IN ('calibration', 'manual')"),
    )
    op.execute(
        f"INSERT INTO active_thresholds_by_class ({COLUMNS}, class_name) "
        f"SELECT {COLUMNS}, '' FROM active_thresholds"
    )
    op.drop_table("active_thresholds")
    op.rename_table("active_thresholds_by_class", "active_thresholds")
    # A plain ADD COLUMN keeps the history's rows and constraints in place on both databases.
    op.add_column(
        "threshold_history",
        sa.Column("class_name", sa.Text, nullable=False, server_default=sa.text("''")),
    )

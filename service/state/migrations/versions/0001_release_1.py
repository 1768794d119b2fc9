"""The schema of the first release: calibrations, active thresholds and their history.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the first release's tables (a file of that release is stamped at this revision)."""
    op.create_table(
        "calibrations",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.Text, nullable=False, unique=True),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("digest", sa.Text, nullable=False),
        sa.Column("strategy", sa.Text, nullable=False),
        sa.Column("target", sa.Float),
        sa.Column("params", sa.Text, nullable=False),
        sa.Column("activate", sa.Boolean(create_constraint=False), nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("progress", sa.Float, nullable=False, server_default=sa.text("0")),
        sa.Column("threshold", sa.Float),
        sa.Column("auc", sa.Float),
        sa.Column("report", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("created", sa.Text, nullable=False),
        sa.Column("started", sa.Text),
        sa.Column("finished", sa.Text),
        sa.CheckConstraint("status IN ('queued', 'running', 'succeeded', 'failed')"),
    )
    op.create_index("calibrations_by_model", "calibrations", ["model", "seq"])
    op.create_table(
        "active_thresholds",
        sa.Column("model", sa.Text, primary_key=True),
        sa.Column("digest", sa.Text, primary_key=True),
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("calibration_id", sa.Text, sa.ForeignKey("calibrations.id")),
        sa.Column("updated", sa.Text, nullable=False),
        sa.CheckConstraint("source IN ('calibration', 'manual')"),
    )
    op.create_table(
        "threshold_history",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.Text, nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("digest", sa.Text, nullable=False),
        sa.Column("value", sa.Float),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("calibration_id", sa.Text),
        sa.Column("previous_value", sa.Float),
        sa.Column("previous_source", sa.Text, nullable=False),
        sa.Column("actor", sa.Text),
        sa.Column("reason", sa.Text),
        sa.CheckConstraint("source IN ('default', 'calibration', 'manual')"),
    )
    op.create_index("history_by_model", "threshold_history", ["model", "seq"])

"""State shared by many processes: job leases, one running job per model, a version counter.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

LEFT_BEHIND = "the service restarted while this calibration ran"


def upgrade() -> None:
    """Add leases and the version counter; settle jobs an older release left unfinished."""
    with op.batch_alter_table("calibrations") as table:
        table.add_column(sa.Column("owner", sa.Text))
        table.add_column(sa.Column("lease_until", sa.Float))
    # An older release's unfinished jobs have no owner to renew them: that release failed them at
    # its next start, and so does the upgrade, before the one-running-job index can object.
    calibrations = sa.table(
        "calibrations",
        sa.column("status", sa.Text),
        sa.column("error", sa.Text),
        sa.column("finished", sa.Text),
    )
    op.execute(
        calibrations.update()
        .where(calibrations.c.status.in_(("queued", "running")))
        .values(
            status="failed",
            error=LEFT_BEHIND,
            finished=datetime.now(UTC).isoformat(timespec="microseconds"),
        )
    )
    op.create_index(
        "one_running_per_model",
        "calibrations",
        ["model"],
        unique=True,
        sqlite_where=sa.text("status = 'running'"),
        postgresql_where=sa.text("status = 'running'"),
    )
    version = op.create_table(
        "state_version",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("version", sa.Integer, nullable=False),
    )
    op.bulk_insert(version, [{"id": 1, "version": 0}])

"""The store's tables, defined once for SQLite and PostgreSQL (SQLAlchemy Core).

Times are ISO 8601 text in UTC, as the first release wrote them, so its files need no rewrite;
a lease's end is epoch seconds, compared with the clock of whichever process sweeps.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    text,
)

metadata = MetaData()

calibrations = Table(
    "calibrations",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", Text, nullable=False, unique=True),
    Column("model", Text, nullable=False),
    Column("digest", Text, nullable=False),
    Column("strategy", Text, nullable=False),
    Column("target", Float),
    Column("params", Text, nullable=False),
    Column("activate", Boolean(create_constraint=False), nullable=False),
    Column("status", Text, nullable=False),
    Column("progress", Float, nullable=False, server_default=text("0")),
    Column("threshold", Float),
    Column("auc", Float),
    Column("report", Text),
    Column("error", Text),
    Column("created", Text, nullable=False),
    Column("started", Text),
    Column("finished", Text),
    # Which process runs (or queued) the job, and until when it vouches for it.
    Column("owner", Text),
    Column("lease_until", Float),
    CheckConstraint("status IN ('queued', 'running', 'succeeded', 'failed')"),
)
Index("calibrations_by_model", calibrations.c.model, calibrations.c.seq)
# At most one running job per model across every process sharing the database.
Index(
    "one_running_per_model",
    calibrations.c.model,
    unique=True,
    sqlite_where=text("status = 'running'"),
    postgresql_where=text("status = 'running'"),
)

active_thresholds = Table(
    "active_thresholds",
    metadata,
    Column("model", Text, primary_key=True),
    Column("digest", Text, primary_key=True),
    Column("value", Float, nullable=False),
    Column("source", Text, nullable=False),
    Column("calibration_id", Text, ForeignKey("calibrations.id")),
    Column("updated", Text, nullable=False),
    # A multi-class model's class; "" for a binary model (its one threshold).
    Column("class_name", Text, primary_key=True, server_default=text("''")),
    CheckConstraint("source IN ('calibration', 'manual')"),
)

threshold_history = Table(
    "threshold_history",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("at", Text, nullable=False),
    Column("model", Text, nullable=False),
    Column("digest", Text, nullable=False),
    Column("value", Float),
    Column("source", Text, nullable=False),
    Column("calibration_id", Text),
    Column("previous_value", Float),
    Column("previous_source", Text, nullable=False),
    Column("actor", Text),
    Column("reason", Text),
    Column("class_name", Text, nullable=False, server_default=text("''")),
    CheckConstraint("source IN ('default', 'calibration', 'manual')"),
)
Index("history_by_model", threshold_history.c.model, threshold_history.c.seq)

# One row, bumped by every transaction that changes a threshold: a process compares it with the
# number it last saw to know, in one cheap read, whether its cached thresholds are stale.
state_version = Table(
    "state_version",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("version", Integer, nullable=False),
)

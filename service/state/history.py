"""The audit trail of threshold changes: one entry per change, written in the change's transaction.

The threshold repository (`service.state.thresholds`) writes an entry in the same transaction as
the change it records, so a change and its entry land together or not at all; clients read the
trail newest first, a page at a time.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, RowMapping, insert, select

from service.state.records import ThresholdChange, ThresholdSource
from service.state.session import StateDatabase, now_text
from service.state.tables import threshold_history as HISTORY


class AuditTrail:
    """Reads and appends a model's threshold history."""

    def __init__(self, database: StateDatabase) -> None:
        """The trail kept in `database`."""
        self.database = database

    def page(
        self, model: str, limit: int | None = None, offset: int = 0, cls: str = ""
    ) -> list[ThresholdChange]:
        """The audit trail of `model`'s threshold changes (of class `cls`), newest first."""
        columns = [column for column in HISTORY.c if column.name not in ("seq", "class_name")]
        query = (
            select(*columns)
            .where(HISTORY.c.model == model, HISTORY.c.class_name == cls)
            .order_by(HISTORY.c.seq.desc())
            .limit(limit)
            .offset(offset or None)
        )
        with self.database.read() as db:
            rows = db.execute(query).mappings().all()
        return [
            ThresholdChange(**{**dict(row), "at": datetime.fromisoformat(row["at"])})
            for row in rows
        ]

    @staticmethod
    def record(
        db: Connection,
        model: str,
        digest: str,
        value: float | None,
        source: ThresholdSource,
        calibration_id: str | None,
        previous: RowMapping | None,
        actor: str | None,
        at: str | None = None,
        cls: str = "",
    ) -> None:
        """In a threshold-changing write: the entry for it (`previous`: the row it replaces)."""
        db.execute(
            insert(HISTORY).values(
                at=at or now_text(),
                model=model,
                digest=digest,
                class_name=cls,
                value=value,
                source=source,
                calibration_id=calibration_id,
                previous_value=None if previous is None else previous["value"],
                previous_source="default" if previous is None else previous["source"],
                actor=actor,
            )
        )

    @staticmethod
    def note_once(
        db: Connection, model: str, digest: str, previous: RowMapping, reason: str
    ) -> None:
        """In a write: note that the service went back to the default for `reason`, unless the
        trail already says so for this checkpoint (a note is made once, however many starts)."""
        seen = db.execute(
            select(HISTORY.c.seq).where(
                HISTORY.c.model == model, HISTORY.c.digest == digest, HISTORY.c.reason == reason
            )
        ).first()
        if seen is None:
            db.execute(
                insert(HISTORY).values(
                    at=now_text(),
                    model=model,
                    digest=digest,
                    value=None,
                    source="default",
                    previous_value=previous["value"],
                    previous_source=previous["source"],
                    reason=reason,
                )
            )

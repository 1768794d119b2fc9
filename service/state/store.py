"""The threshold store: one database, three repositories over it.

One interface over two databases (service/state/database.py): an embedded SQLite file for one
machine, PostgreSQL for processes on many. Every change is one transaction, so a kill at any
moment leaves either the old or the new state, never a mix. The work is split by concern:

- `jobs` (service/state/jobs.py): calibration jobs, their leases and which processes are gone;
- `thresholds` (service/state/thresholds.py): the active thresholds, cached in memory and
  followed across processes;
- `audit` (service/state/history.py): the trail of threshold changes.

`ThresholdStore` opens the database, builds the three and answers the threshold and calibration
reads and changes the rest of the service makes, by delegating to them. A database that fails at
run time (stopped, unreachable, corrupt) raises StoreFailing from every operation until it
answers again (service/state/outage.py).
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine

from service.state.database import open_engine
from service.state.errors import (
    ActivationError,
    CalibrationNotFound,
    InvalidTransition,
    StoreError,
)
from service.state.history import AuditTrail
from service.state.jobs import LEASE_S, CalibrationQueue, new_id, owner_is_gone, process_owner
from service.state.records import (
    ActiveThreshold,
    CalibrationRecord,
    JobParams,
    JobStatus,
    ThresholdChange,
    ThresholdSource,
)
from service.state.session import StateDatabase
from service.state.thresholds import RECHECK_S, Thresholds

__all__ = [
    "ActivationError",
    "ActiveThreshold",
    "CalibrationNotFound",
    "CalibrationRecord",
    "InvalidTransition",
    "JobParams",
    "JobStatus",
    "StoreError",
    "ThresholdChange",
    "ThresholdSource",
    "ThresholdStore",
    "new_id",
    "owner_is_gone",
    "process_owner",
]


class ThresholdStore:
    """Thread-safe access to the store's database; each change is one transaction."""

    def __init__(
        self,
        location: Path | str,
        lease_s: float = LEASE_S,
        recheck_s: float = RECHECK_S,
        read_only_because: str | None = None,
    ) -> None:
        """Open (creating folder, tables and upgrades as needed) a SQLite file or a database URL.

        `location` is a path (SQLite) or a URL such as `postgresql://user@host/db`. With
        `read_only_because` (why the state folder cannot be written) nothing is created or
        upgraded: a SQLite file is read if it can be, else an empty database in memory stands
        in for it, and every write raises StoreReadOnly.
        """
        self.database = StateDatabase(location, read_only_because, self._open_engine)
        self.location, self.path = location, self.database.path
        self.read_only_because = read_only_because
        self.engine, self.outage = self.database.engine, self.database.outage
        self.audit = AuditTrail(self.database)
        self.thresholds = Thresholds(self.database, self.audit, recheck_s)
        self.jobs = CalibrationQueue(self.database, self.thresholds, lease_s)
        self.lease_s, self.owner = lease_s, self.jobs.owner

    def _open_engine(self, url: str) -> Engine:
        return open_engine(url)

    def close(self) -> None:
        """Close the idle connections (call once no other thread uses the store)."""
        self.database.close()

    # Thresholds --------------------------------------------------------------------------------

    def active_threshold(self, model: str, digest: str, cls: str = "") -> ActiveThreshold | None:
        """The threshold inference applies to this checkpoint (None: its default); see
        `Thresholds.active_threshold`. `cls`: a multi-class model's class ("" for binary)."""
        return self.thresholds.active_threshold(model, digest, cls)

    async def active_threshold_async(
        self, model: str, digest: str, cls: str = ""
    ) -> ActiveThreshold | None:
        """`active_threshold` for async code: from memory, or read in a worker thread."""
        return await self.thresholds.active_threshold_async(model, digest, cls)

    def current_threshold(self, model: str, digest: str, cls: str = "") -> ActiveThreshold | None:
        """The threshold stored for this checkpoint, read from the database now."""
        return self.thresholds.current_threshold(model, digest, cls)

    def set_manual(
        self, model: str, digest: str, value: float, actor: str | None = None, cls: str = ""
    ) -> ActiveThreshold:
        """Make `value` the active threshold of this checkpoint (source `manual`)."""
        return self.thresholds.set_manual(model, digest, value, actor, cls)

    def activate_calibration(
        self,
        model: str,
        digest: str,
        calibration_id: str,
        actor: str | None = None,
        class_values: dict[str, float] | None = None,
    ) -> ActiveThreshold:
        """Make a succeeded calibration of this checkpoint the active threshold (every class's
        with `class_values`)."""
        return self.thresholds.activate_calibration(
            model, digest, calibration_id, actor, class_values
        )

    def reset_to_default(
        self, model: str, digest: str, actor: str | None = None, cls: str = ""
    ) -> bool:
        """Drop this checkpoint's stored threshold so its default applies; False if none was set."""
        return self.thresholds.reset_to_default(model, digest, actor, cls)

    def note_checkpoint(self, model: str, digest: str) -> bool:
        """At start-up: log and audit (once) a threshold of `model` left by another checkpoint."""
        return self.thresholds.note_checkpoint(model, digest)

    def history(
        self, model: str, limit: int | None = None, offset: int = 0, cls: str = ""
    ) -> list[ThresholdChange]:
        """The audit trail of `model`'s threshold changes (of class `cls`), newest first."""
        return self.audit.page(model, limit, offset, cls)

    def state(self) -> str:
        """`writable`, `read-only: <why>` or `failing since <time>: <why>`, as of the last try."""
        return self.thresholds.state()

    # Calibrations ------------------------------------------------------------------------------

    def get_calibration(self, model: str, calibration_id: str) -> CalibrationRecord | None:
        """One calibration of `model` with its report, or None."""
        return self.jobs.get_calibration(model, calibration_id)

    def list_calibrations(self, model: str) -> list[CalibrationRecord]:
        """Every calibration of `model`, newest first, without reports."""
        return self.jobs.list_calibrations(model)

    def fail_interrupted(self, reason: str) -> int:
        """At start-up: fail the jobs stopped processes left; returns how many."""
        return self.jobs.fail_interrupted(reason)

"""The threshold store: calibrations, active thresholds and their audit trail, in SQLite.

Every change is one SQLite transaction, so a kill at any moment leaves either the old or the new
state on disk, never a mix. Active thresholds are keyed by (model, checkpoint digest): a threshold
recorded for one checkpoint is never applied to another, yet comes back if that checkpoint does.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from anyio import to_thread

from service.state.errors import read_only, unavailable

log = logging.getLogger(__name__)

ThresholdSource = Literal["default", "calibration", "manual"]
JobStatus = Literal["queued", "running", "succeeded", "failed"]

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS calibrations (
    seq       INTEGER PRIMARY KEY,
    id        TEXT NOT NULL UNIQUE,
    model     TEXT NOT NULL,
    digest    TEXT NOT NULL,
    strategy  TEXT NOT NULL,
    target    REAL,
    params    TEXT NOT NULL,
    activate  INTEGER NOT NULL,
    status    TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
    progress  REAL NOT NULL DEFAULT 0,
    threshold REAL,
    auc       REAL,
    report    TEXT,
    error     TEXT,
    created   TEXT NOT NULL,
    started   TEXT,
    finished  TEXT
);
CREATE INDEX IF NOT EXISTS calibrations_by_model ON calibrations (model, seq);
CREATE TABLE IF NOT EXISTS active_thresholds (
    model          TEXT NOT NULL,
    digest         TEXT NOT NULL,
    value          REAL NOT NULL,
    source         TEXT NOT NULL CHECK (source IN ('calibration', 'manual')),
    calibration_id TEXT REFERENCES calibrations (id),
    updated        TEXT NOT NULL,
    PRIMARY KEY (model, digest)
);
CREATE TABLE IF NOT EXISTS threshold_history (
    seq             INTEGER PRIMARY KEY,
    at              TEXT NOT NULL,
    model           TEXT NOT NULL,
    digest          TEXT NOT NULL,
    value           REAL,
    source          TEXT NOT NULL CHECK (source IN ('default', 'calibration', 'manual')),
    calibration_id  TEXT,
    previous_value  REAL,
    previous_source TEXT NOT NULL,
    actor           TEXT,
    reason          TEXT
);
CREATE INDEX IF NOT EXISTS history_by_model ON threshold_history (model, seq);
"""
LIST_COLUMNS = (
    "id, model, digest, status, strategy, target, params, activate, progress, threshold, auc, "
    "error, created, started, finished"
)


class StoreError(Exception):
    """The store cannot do what was asked; the message says why."""


class CalibrationNotFound(StoreError, LookupError):
    """No calibration with that id for that model."""


class InvalidTransition(StoreError):
    """The calibration's status does not allow this step (e.g. finishing a failed job)."""


class ActivationError(StoreError):
    """A calibration cannot become the active threshold: not succeeded, or another checkpoint."""


@dataclass(frozen=True)
class ActiveThreshold:
    """The threshold in force for one model's checkpoint and where it came from."""

    value: float
    source: ThresholdSource
    calibration_id: str | None
    digest: str
    updated: datetime | None


@dataclass(frozen=True)
class CalibrationRecord:
    """One calibration job; `report` is loaded only by `get_calibration`."""

    id: str
    model: str
    digest: str
    status: JobStatus
    strategy: str
    target: float | None
    params: dict[str, Any]
    activate: bool
    progress: float
    threshold: float | None
    auc: float | None
    error: str | None
    created: datetime
    started: datetime | None
    finished: datetime | None
    report: dict[str, Any] | None = None


@dataclass(frozen=True)
class ThresholdChange:
    """One entry of a model's threshold audit trail."""

    at: datetime
    model: str
    digest: str
    value: float | None  # None: back to the checkpoint's default, whose value the store never sees
    source: ThresholdSource
    calibration_id: str | None
    previous_value: float | None
    previous_source: ThresholdSource
    actor: str | None
    reason: str | None


def new_id() -> str:
    """A 32-hex-digit id that sorts by creation time (UUIDv7 layout: ms clock, then randomness)."""
    stamp = time.time_ns() // 1_000_000
    return f"{stamp:012x}7{os.urandom(10).hex()[:19]}"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _json(value: Any) -> str:
    # Reports come from numpy code; numpy scalars and arrays know how to become plain Python.
    def plain(obj: Any) -> Any:
        if hasattr(obj, "tolist"):
            return obj.tolist()
        raise TypeError(f"{type(obj).__name__} is not JSON serialisable")

    return json.dumps(value, default=plain)


def _finite(value: float, what: str) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, not {value!r}")
    return value


class ThresholdStore:
    """Thread-safe access to the SQLite database at `path`; each change is one transaction."""

    def __init__(self, path: Path, read_only_because: str | None = None) -> None:
        """Open (creating folder, file and schema as needed) the database at `path`.

        With `read_only_because` (why the state folder cannot be written), nothing is created:
        the database is read if it can be, else an empty one in memory stands in for it, and
        every write raises StoreReadOnly.
        """
        self.path = Path(path)
        self.read_only_because = read_only_because
        self._uri: str | None = None
        self._keeper: sqlite3.Connection | None = None
        # A pool rather than one locked connection: in WAL mode readers on the event loop never
        # wait for a writer's fsync, and a pooled connection skips the ~0.5 ms cost of opening one.
        self._idle: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        # Every inference request reads its model's active threshold. This process is the
        # store's only writer (one process per state folder), so the answers are kept in memory
        # and dropped when a threshold changes (not at other writes: a calibration's progress
        # ticks must not send inference back to SQLite); `_generation` keeps a read that raced
        # a threshold change out.
        self._active: dict[tuple[str, str], ActiveThreshold | None] = {}
        self._generation = 0
        self._cache_lock = threading.Lock()
        if read_only_because is not None:
            self._open_read_only()
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connection() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} was written by a newer version of the service "
                    f"(schema {version} > {SCHEMA_VERSION}); upgrade the service"
                )
            # WAL is a property of the file, so setting it once here covers every connection.
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(
                f"BEGIN IMMEDIATE; {SCHEMA} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;"
            )

    def _open_read_only(self) -> None:
        """Read the database as it is on disk, or stand an empty one in for it."""
        # mode=ro still needs the WAL index (-shm), which a cleanly closed database no longer
        # has and a read-only folder cannot create; immutable=1 reads the file without it.
        for query in ("mode=ro", "mode=ro&immutable=1"):
            self._uri = f"{self.path.resolve().as_uri()}?{query}"
            try:
                with self._connection() as db:
                    db.execute("SELECT count(*) FROM active_thresholds").fetchone()
                return
            except sqlite3.Error as error:
                self.close()
                log.info("cannot read %s with %s: %s", self.path, query, error)
        log.warning("%s is unreadable; every model runs on its default threshold", self.path)
        # A named in-memory database lives as long as one connection to it: the keeper.
        self._uri = f"file:unet-empty-{id(self)}?mode=memory&cache=shared"
        self._keeper = self._connect()
        self._keeper.executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        target = self.path if self._uri is None else self._uri
        db = sqlite3.connect(
            target,
            timeout=30,
            isolation_level=None,
            check_same_thread=False,
            uri=self._uri is not None,
        )
        db.row_factory = sqlite3.Row
        # NORMAL is already crash-safe against a killed process in WAL mode; FULL also fsyncs the
        # WAL at every commit, so an acknowledged threshold change survives a power cut. Writes
        # are rare (threshold changes, job progress), so the fsync costs nothing that matters.
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        return db

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        try:
            db = self._idle.get_nowait()
        except queue.Empty:
            db = self._connect()
        try:
            yield db
        finally:
            if db.in_transaction:
                # Only an error leaves a transaction open; a failed rollback drops the connection.
                db.rollback()
            self._idle.put(db)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A transaction that takes the write lock at once, so its reads cannot go stale.

        The one place where a full disk or a read-only folder becomes StoreUnavailable.
        """
        if self.read_only_because is not None:
            raise read_only(self.read_only_because)
        try:
            with self._connection() as db:
                db.execute("BEGIN IMMEDIATE")
                yield db
                db.execute("COMMIT")
        except (sqlite3.Error, OSError) as error:
            translated = unavailable(error, str(self.path.parent))
            if translated is None:
                raise
            raise translated from error

    def _thresholds_changed(self) -> None:
        # Called after the commit: a read that began before it sees a newer generation and
        # leaves the cache alone, so a stale answer never outlives the change.
        with self._cache_lock:
            self._generation += 1
            self._active.clear()

    def close(self) -> None:
        """Close the idle connections (call once no other thread uses the store)."""
        if self._keeper is not None:
            self._keeper.close()
            self._keeper = None
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return

    # Calibrations ---------------------------------------------------------------------------

    def create_calibration(
        self,
        model: str,
        digest: str,
        strategy: str,
        target: float | None,
        params: dict[str, Any],
        activate: bool,
    ) -> str:
        """Record a queued calibration job and return its id."""
        calibration_id = new_id()
        with self._write() as db:
            db.execute(
                "INSERT INTO calibrations (id, model, digest, strategy, target, params, activate,"
                " status, created) VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?)",
                (calibration_id, model, digest, strategy, target, _json(params), activate, _now()),
            )
        return calibration_id

    def mark_running(self, calibration_id: str) -> None:
        """Move a queued job to running."""
        with self._write() as db:
            self._transition(db, calibration_id, ("queued",), "running")
            db.execute(
                "UPDATE calibrations SET status = 'running', started = ? WHERE id = ?",
                (_now(), calibration_id),
            )

    def set_progress(self, calibration_id: str, progress: float) -> None:
        """Record a job's progress in [0, 1]; ignored once the job has finished."""
        progress = min(max(_finite(progress, "progress"), 0.0), 1.0)
        with self._write() as db:
            db.execute(
                "UPDATE calibrations SET progress = ? "
                "WHERE id = ? AND status IN ('queued', 'running')",
                (progress, calibration_id),
            )

    def finish_calibration(
        self,
        calibration_id: str,
        report: dict[str, Any],
        threshold: float,
        auc: float | None,
        activate: bool | None = None,
    ) -> ActiveThreshold | None:
        """Store a job's report and, if `activate` (None: as asked at creation), activate it."""
        # One transaction for both: a crash never leaves a succeeded calibration that was meant
        # to be active but is not.
        threshold = _finite(threshold, "threshold")
        auc = None if auc is None or not math.isfinite(auc) else float(auc)
        with self._write() as db:
            row = self._transition(db, calibration_id, ("queued", "running"), "succeeded")
            db.execute(
                "UPDATE calibrations SET status = 'succeeded', progress = 1, threshold = ?,"
                " auc = ?, report = ?, finished = ? WHERE id = ?",
                (threshold, auc, _json(report), _now(), calibration_id),
            )
            if not (bool(row["activate"]) if activate is None else activate):
                return None
            active = self._set_active(
                db, row["model"], row["digest"], threshold, "calibration", calibration_id, None
            )
        self._thresholds_changed()
        return active

    def fail_calibration(self, calibration_id: str, error: str) -> None:
        """Mark a queued or running job failed with a message a person can act on."""
        with self._write() as db:
            self._transition(db, calibration_id, ("queued", "running"), "failed")
            db.execute(
                "UPDATE calibrations SET status = 'failed', error = ?, finished = ? WHERE id = ?",
                (error, _now(), calibration_id),
            )

    def fail_interrupted(self, reason: str) -> int:
        """At start-up: mark every job left queued or running failed; returns how many."""
        with self._write() as db:
            cursor = db.execute(
                "UPDATE calibrations SET status = 'failed', error = ?, finished = ? "
                "WHERE status IN ('queued', 'running')",
                (reason, _now()),
            )
            return cursor.rowcount

    def get_calibration(self, model: str, calibration_id: str) -> CalibrationRecord | None:
        """One calibration of `model` with its report, or None."""
        with self._connection() as db:
            row = db.execute(
                f"SELECT {LIST_COLUMNS}, report FROM calibrations WHERE model = ? AND id = ?",
                (model, calibration_id),
            ).fetchone()
        return None if row is None else _record(row, with_report=True)

    def list_calibrations(self, model: str) -> list[CalibrationRecord]:
        """Every calibration of `model`, newest first, without reports."""
        with self._connection() as db:
            rows = db.execute(
                f"SELECT {LIST_COLUMNS} FROM calibrations WHERE model = ? ORDER BY seq DESC",
                (model,),
            ).fetchall()
        return [_record(row, with_report=False) for row in rows]

    @staticmethod
    def _transition(
        db: sqlite3.Connection, calibration_id: str, allowed: tuple[str, ...], to: str
    ) -> sqlite3.Row:
        row = db.execute(
            "SELECT model, digest, status, activate FROM calibrations WHERE id = ?",
            (calibration_id,),
        ).fetchone()
        if row is None:
            raise CalibrationNotFound(f"no calibration {calibration_id!r}")
        if row["status"] not in allowed:
            raise InvalidTransition(
                f"calibration {calibration_id!r} is {row['status']}; it cannot become {to}"
            )
        return row

    # Thresholds ------------------------------------------------------------------------------

    def active_threshold(self, model: str, digest: str) -> ActiveThreshold | None:
        """The threshold stored for this exact checkpoint, or None: use the checkpoint's default."""
        key = (model, digest)
        with self._cache_lock:
            if key in self._active:
                return self._active[key]
            generation = self._generation
        active = self._read_active(model, digest)
        with self._cache_lock:
            if self._generation == generation:
                self._active[key] = active
        return active

    async def active_threshold_async(self, model: str, digest: str) -> ActiveThreshold | None:
        """`active_threshold` for async code: from memory, or read from SQLite in a thread."""
        with self._cache_lock:
            if (model, digest) in self._active:
                return self._active[(model, digest)]
        return await to_thread.run_sync(self.active_threshold, model, digest)

    def _read_active(self, model: str, digest: str) -> ActiveThreshold | None:
        with self._connection() as db:
            row = db.execute(
                "SELECT value, source, calibration_id, digest, updated FROM active_thresholds "
                "WHERE model = ? AND digest = ?",
                (model, digest),
            ).fetchone()
        return None if row is None else _active(row)

    def note_checkpoint(self, model: str, digest: str) -> bool:
        """At start-up: log and audit (once) a threshold of `model` left by another checkpoint.

        A threshold recorded for one checkpoint never applies to another, so a changed checkpoint
        runs on its default; this says so, and returns whether a stored threshold was ignored.
        """
        # A write of its own, called once per model at start-up: a read must never write.
        with self._write() as db:
            if self._current(db, model, digest) is not None:
                return False
            stale = db.execute(
                "SELECT value, source, digest FROM active_thresholds WHERE model = ? "
                "ORDER BY updated DESC LIMIT 1",
                (model,),
            ).fetchone()
            if stale is None:
                return False
            reason = (
                f"checkpoint changed: the {stale['source']} threshold {stale['value']:g} recorded "
                f"for digest {stale['digest'][:12]} does not apply to digest {digest[:12]}"
            )
            log.warning("model %s: %s; using the checkpoint's default", model, reason)
            seen = db.execute(
                "SELECT 1 FROM threshold_history WHERE model = ? AND digest = ? AND reason = ?",
                (model, digest, reason),
            ).fetchone()
            if seen is None:
                db.execute(
                    "INSERT INTO threshold_history (at, model, digest, value, source,"
                    " previous_value, previous_source, reason)"
                    " VALUES (?, ?, ?, NULL, 'default', ?, ?, ?)",
                    (_now(), model, digest, stale["value"], stale["source"], reason),
                )
            return True

    def set_manual(
        self, model: str, digest: str, value: float, actor: str | None = None
    ) -> ActiveThreshold:
        """Make `value` the active threshold of this checkpoint (source `manual`)."""
        value = _finite(value, "threshold")
        with self._write() as db:
            active = self._set_active(db, model, digest, value, "manual", None, actor)
        self._thresholds_changed()
        return active

    def activate_calibration(
        self, model: str, digest: str, calibration_id: str, actor: str | None = None
    ) -> ActiveThreshold:
        """Make a succeeded calibration of this checkpoint the active threshold."""
        with self._write() as db:
            row = db.execute(
                "SELECT status, digest, threshold FROM calibrations WHERE model = ? AND id = ?",
                (model, calibration_id),
            ).fetchone()
            if row is None:
                raise CalibrationNotFound(f"model {model!r} has no calibration {calibration_id!r}")
            if row["status"] != "succeeded":
                raise ActivationError(
                    f"calibration {calibration_id!r} is {row['status']}; "
                    "only a succeeded calibration can be activated"
                )
            if row["digest"] != digest:
                raise ActivationError(
                    f"calibration {calibration_id!r} was made for checkpoint digest "
                    f"{row['digest'][:12]}, but model {model!r} now has digest {digest[:12]}; "
                    "calibrate the current checkpoint"
                )
            active = self._set_active(
                db, model, digest, row["threshold"], "calibration", calibration_id, actor
            )
        self._thresholds_changed()
        return active

    def reset_to_default(self, model: str, digest: str, actor: str | None = None) -> bool:
        """Drop this checkpoint's stored threshold so its default applies; False if none was set."""
        with self._write() as db:
            previous = self._current(db, model, digest)
            if previous is None:
                return False
            db.execute(
                "DELETE FROM active_thresholds WHERE model = ? AND digest = ?", (model, digest)
            )
            self._audit(db, model, digest, None, "default", None, previous, actor)
        self._thresholds_changed()
        return True

    def history(self, model: str) -> list[ThresholdChange]:
        """The audit trail of `model`'s threshold changes, newest first."""
        with self._connection() as db:
            rows = db.execute(
                "SELECT at, model, digest, value, source, calibration_id, previous_value,"
                " previous_source, actor, reason FROM threshold_history WHERE model = ?"
                " ORDER BY seq DESC",
                (model,),
            ).fetchall()
        return [
            ThresholdChange(**{**dict(row), "at": datetime.fromisoformat(row["at"])})
            for row in rows
        ]

    @staticmethod
    def _current(db: sqlite3.Connection, model: str, digest: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = db.execute(
            "SELECT value, source FROM active_thresholds WHERE model = ? AND digest = ?",
            (model, digest),
        ).fetchone()
        return row

    def _set_active(
        self,
        db: sqlite3.Connection,
        model: str,
        digest: str,
        value: float,
        source: ThresholdSource,
        calibration_id: str | None,
        actor: str | None,
    ) -> ActiveThreshold:
        previous = self._current(db, model, digest)
        updated = _now()
        db.execute(
            "INSERT INTO active_thresholds (model, digest, value, source, calibration_id, updated)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (model, digest) DO UPDATE SET"
            " value = excluded.value, source = excluded.source,"
            " calibration_id = excluded.calibration_id, updated = excluded.updated",
            (model, digest, value, source, calibration_id, updated),
        )
        self._audit(db, model, digest, value, source, calibration_id, previous, actor, updated)
        return ActiveThreshold(
            value, source, calibration_id, digest, datetime.fromisoformat(updated)
        )

    @staticmethod
    def _audit(
        db: sqlite3.Connection,
        model: str,
        digest: str,
        value: float | None,
        source: ThresholdSource,
        calibration_id: str | None,
        previous: sqlite3.Row | None,
        actor: str | None,
        at: str | None = None,
    ) -> None:
        db.execute(
            "INSERT INTO threshold_history (at, model, digest, value, source, calibration_id,"
            " previous_value, previous_source, actor) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                at or _now(),
                model,
                digest,
                value,
                source,
                calibration_id,
                None if previous is None else previous["value"],
                "default" if previous is None else previous["source"],
                actor,
            ),
        )


def _active(row: sqlite3.Row) -> ActiveThreshold:
    return ActiveThreshold(
        value=row["value"],
        source=row["source"],
        calibration_id=row["calibration_id"],
        digest=row["digest"],
        updated=datetime.fromisoformat(row["updated"]),
    )


def _record(row: sqlite3.Row, with_report: bool) -> CalibrationRecord:
    return CalibrationRecord(
        id=row["id"],
        model=row["model"],
        digest=row["digest"],
        status=row["status"],
        strategy=row["strategy"],
        target=row["target"],
        params=json.loads(row["params"]),
        activate=bool(row["activate"]),
        progress=row["progress"],
        threshold=row["threshold"],
        auc=row["auc"],
        error=row["error"],
        created=datetime.fromisoformat(row["created"]),
        started=_time(row["started"]),
        finished=_time(row["finished"]),
        report=json.loads(row["report"]) if with_report and row["report"] is not None else None,
    )

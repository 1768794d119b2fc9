"""The threshold store: calibrations, active thresholds and their audit trail.

One interface over two databases (service/state/database.py): an embedded SQLite file for one
machine, PostgreSQL for processes on many. Every change is one transaction, so a kill at any
moment leaves either the old or the new state, never a mix. Active thresholds are keyed by
(model, checkpoint digest): a threshold recorded for one checkpoint is never applied to another,
yet comes back if that checkpoint does. Several processes may share the database: each keeps the
thresholds in memory and drops them when the shared version counter moves, and each calibration
job carries a lease that its process renews; an expired lease means its process is gone.

A database that fails at run time (stopped, unreachable, corrupt) raises StoreFailing from every
operation until it answers again (service/state/outage.py); inference meanwhile reads the last
thresholds this process knew, marked stale. Reads made for a client (`current_threshold`) go to
the database, so a change another process acknowledged is seen at once.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from anyio import to_thread
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    RowMapping,
    delete,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from service.state.database import WRITE, database_url, open_engine, open_read_only
from service.state.errors import StoreFailing, read_only, unavailable
from service.state.migrate import NewerSchema, upgrade
from service.state.outage import Outage, is_outage
from service.state.tables import active_thresholds as AT
from service.state.tables import calibrations as CAL
from service.state.tables import state_version as VERSION
from service.state.tables import threshold_history as HISTORY

log = logging.getLogger(__name__)

ThresholdSource = Literal["default", "calibration", "manual"]
JobStatus = Literal["queued", "running", "succeeded", "failed"]
Row = RowMapping

LEASE_S = 15.0  # a job whose process has not vouched for it this long is failed by any process
RECHECK_S = 0.25  # how often a process asks whether another one changed a threshold
PROBE_EVERY_S = 1.0  # during an outage, how often inference lets one request try the database
HISTORY_PAGE = 100  # threshold changes per page unless a client asks for another size
UNFINISHED = ("queued", "running")
LIST_COLUMNS = (
    CAL.c.id,
    CAL.c.model,
    CAL.c.digest,
    CAL.c.status,
    CAL.c.strategy,
    CAL.c.target,
    CAL.c.params,
    CAL.c.activate,
    CAL.c.progress,
    CAL.c.threshold,
    CAL.c.auc,
    CAL.c.error,
    CAL.c.created,
    CAL.c.started,
    CAL.c.finished,
)
ACTIVE_COLUMNS = (AT.c.value, AT.c.source, AT.c.calibration_id, AT.c.digest, AT.c.updated)


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
    stale: bool = False  # the database is failing: this is the last value this process knew


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


def process_owner() -> str:
    """This process's name on the jobs it owns: host, pid, and a nonce a restart changes."""
    return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"


def owner_is_gone(owner: str | None, me: str) -> bool:
    """Whether `owner` was a process of this host that no longer runs (or an earlier `me`)."""
    if owner is None:
        return True  # written by a release without leases
    host, _, rest = owner.partition("/")
    pid_text, _, _ = rest.partition("/")
    if host != socket.gethostname() or not pid_text.isdigit() or owner == me:
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return True  # this pid in an earlier life (a restarted container is pid 1 again)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


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
        self.location = location
        self.path = Path(location) if isinstance(location, Path) else None
        self.read_only_because = read_only_because
        self.lease_s, self.recheck_s = lease_s, recheck_s
        self.owner = process_owner()
        # Every inference request reads its model's active threshold, so the answers are kept
        # in memory. They are dropped when this process changes a threshold (not at other
        # writes: a calibration's progress ticks must not send inference back to the database)
        # and when the shared version counter shows another process did, checked at most every
        # `recheck_s`. `_generation` keeps a read that raced a change out of the cache.
        self._active: dict[tuple[str, str], ActiveThreshold | None] = {}
        self._generation = 0
        self._version: int | None = None
        self._checked = -math.inf
        self._cache_lock = threading.Lock()
        # The last threshold read or written per checkpoint, kept through cache drops: what
        # inference serves (marked stale) while the database fails.
        self._known: dict[tuple[str, str], ActiveThreshold | None] = {}
        self._probing = threading.Lock()  # during an outage, one request at a time tries
        self._probed = -math.inf
        if read_only_because is not None and self.path is not None:
            self.engine = open_read_only(self.path)
            self._writer = self.engine
            self.outage = Outage(str(self.path))
            return
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.engine = self._open_engine(database_url(location))
        self._writer = self.engine.execution_options(**{WRITE: True})
        self.outage = Outage(
            str(self.path) if self.path else self.engine.url.render_as_string(hide_password=True)
        )
        try:
            upgrade(self.engine)
        except NewerSchema as error:
            self.engine.dispose()
            raise StoreError(f"{location}: {error}") from None

    def _open_engine(self, url: str) -> Engine:
        return open_engine(url)

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A connection for reads; a failing database raises StoreFailing."""
        try:
            with self.engine.connect() as db:
                yield db
        except SQLAlchemyError as error:
            if not is_outage(error):
                raise
            raise self.outage.failed(error) from error
        self.outage.answered()

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A transaction serialised against every other write, so its reads cannot go stale.

        The one place where a full disk or a read-only folder becomes StoreUnavailable, and a
        failing database StoreFailing.
        """
        if self.read_only_because is not None:
            raise read_only(self.read_only_because)
        committing = False
        try:
            with self._writer.connect() as db, db.begin():
                yield db
                committing = True  # leaving the block commits
        except (DBAPIError, OSError) as error:
            cause = (error.orig or error) if isinstance(error, DBAPIError) else error
            where = str(self.path.parent) if self.path is not None else "the database"
            translated = unavailable(cause, where)
            if translated is not None:
                raise translated from error
            if not is_outage(error):
                raise
            assert isinstance(error, DBAPIError)
            self.outage.failed(error)
            raise self.outage.error("commit" if committing else "write") from error
        except SQLAlchemyError as error:
            if not is_outage(error):
                raise
            self.outage.failed(error)
            raise self.outage.error("commit" if committing else "write") from error
        self.outage.answered()

    def _thresholds_changed(
        self, version: int, key: tuple[str, str], active: ActiveThreshold | None
    ) -> None:
        # Called after the commit: a read that began before it sees a newer generation and
        # leaves the cache alone, so a stale answer never outlives the change.
        with self._cache_lock:
            self._generation += 1
            self._active.clear()
            self._version = max(version, self._version or 0)
            self._known[key] = active

    @staticmethod
    def _bump(db: Connection) -> int:
        """In a threshold-changing write: move the shared version on; returns the new one."""
        db.execute(update(VERSION).where(VERSION.c.id == 1).values(version=VERSION.c.version + 1))
        return int(db.execute(select(VERSION.c.version).where(VERSION.c.id == 1)).scalar_one())

    def close(self) -> None:
        """Close the idle connections (call once no other thread uses the store)."""
        self.engine.dispose()

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
        """Record a queued calibration job, owned by this process, and return its id."""
        return self.new_calibration(model, digest, strategy, target, params, activate).id

    def new_calibration(
        self,
        model: str,
        digest: str,
        strategy: str,
        target: float | None,
        params: dict[str, Any],
        activate: bool,
    ) -> CalibrationRecord:
        """`create_calibration`, returning the record as written (no read back)."""
        calibration_id, created, text = new_id(), _now(), _json(params)
        with self._write() as db:
            db.execute(
                insert(CAL).values(
                    id=calibration_id,
                    model=model,
                    digest=digest,
                    strategy=strategy,
                    target=target,
                    params=text,
                    activate=bool(activate),
                    status="queued",
                    created=created,
                    owner=self.owner,
                    lease_until=time.time() + self.lease_s,
                )
            )
        return CalibrationRecord(
            id=calibration_id,
            model=model,
            digest=digest,
            status="queued",
            strategy=strategy,
            target=target,
            params=json.loads(text),
            activate=bool(activate),
            progress=0.0,
            threshold=None,
            auc=None,
            error=None,
            created=datetime.fromisoformat(created),
            started=None,
            finished=None,
        )

    def mark_running(self, calibration_id: str) -> bool:
        """Move a queued job to running; False while another job of its model runs anywhere."""
        with self._write() as db:
            row = self._transition(db, calibration_id, ("queued",), "running")
            busy = db.execute(
                select(CAL.c.id).where(CAL.c.model == row["model"], CAL.c.status == "running")
            ).first()
            if busy is not None:
                return False
            db.execute(
                update(CAL)
                .where(CAL.c.id == calibration_id)
                .values(
                    status="running",
                    started=_now(),
                    owner=self.owner,
                    lease_until=time.time() + self.lease_s,
                )
            )
        return True

    def set_progress(self, calibration_id: str, progress: float) -> None:
        """Record a job's progress in [0, 1]; ignored once the job has finished."""
        progress = min(max(_finite(progress, "progress"), 0.0), 1.0)
        with self._write() as db:
            db.execute(
                update(CAL)
                .where(CAL.c.id == calibration_id, CAL.c.status.in_(UNFINISHED))
                .values(progress=progress)
            )

    def renew_leases(self, ids: list[str] | None = None) -> int:
        """Vouch again for this process's unfinished jobs (only `ids`, if given); how many."""
        # With `ids`, a record whose creation reported a failure (so no job runs for it) is not
        # kept alive: its lease runs out and it is failed like an orphan.
        owned: list[ColumnElement[bool]] = [CAL.c.owner == self.owner, CAL.c.status.in_(UNFINISHED)]
        if ids is not None:
            owned.append(CAL.c.id.in_(ids))
        with self._write() as db:
            result = db.execute(
                update(CAL).where(*owned).values(lease_until=time.time() + self.lease_s)
            )
            return result.rowcount

    def fail_expired(self, reason: str) -> int:
        """Mark failed every unfinished job whose process stopped renewing its lease.

        Not until the database has answered this process for a whole lease: a database outage
        stops every process from renewing, and their jobs are not abandoned for that.
        """
        if time.monotonic() - self.outage.answering_since < self.lease_s:
            return 0
        with self._write() as db:
            result = db.execute(
                update(CAL)
                .where(CAL.c.status.in_(UNFINISHED), CAL.c.lease_until < time.time())
                .values(status="failed", error=reason, finished=_now())
            )
            return result.rowcount

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
            row = self._transition(db, calibration_id, UNFINISHED, "succeeded")
            db.execute(
                update(CAL)
                .where(CAL.c.id == calibration_id)
                .values(
                    status="succeeded",
                    progress=1,
                    threshold=threshold,
                    auc=auc,
                    report=_json(report),
                    finished=_now(),
                )
            )
            if not (bool(row["activate"]) if activate is None else activate):
                return None
            active = self._set_active(
                db, row["model"], row["digest"], threshold, "calibration", calibration_id, None
            )
            version = self._bump(db)
        self._thresholds_changed(version, (row["model"], row["digest"]), active)
        return active

    def fail_calibration(self, calibration_id: str, error: str) -> None:
        """Mark a queued or running job failed with a message a person can act on."""
        with self._write() as db:
            self._transition(db, calibration_id, UNFINISHED, "failed")
            db.execute(
                update(CAL)
                .where(CAL.c.id == calibration_id)
                .values(status="failed", error=error, finished=_now())
            )

    def fail_interrupted(self, reason: str) -> int:
        """At start-up: fail the jobs a stopped process left (this host's dead pids, expired
        leases, or no owner at all); returns how many. Live processes' jobs are left alone."""
        with self._write() as db:
            owners = db.execute(
                select(CAL.c.owner).where(CAL.c.status.in_(UNFINISHED)).distinct()
            ).scalars()
            gone = [owner for owner in owners if owner_is_gone(owner, self.owner)]
            result = db.execute(
                update(CAL)
                .where(
                    CAL.c.status.in_(UNFINISHED),
                    or_(
                        CAL.c.owner.is_(None),
                        CAL.c.owner.in_([g for g in gone if g is not None]),
                        CAL.c.lease_until < time.time(),
                    ),
                )
                .values(status="failed", error=reason, finished=_now())
            )
            return result.rowcount

    def get_calibration(self, model: str, calibration_id: str) -> CalibrationRecord | None:
        """One calibration of `model` with its report, or None."""
        with self._read() as db:
            row = (
                db.execute(
                    select(*LIST_COLUMNS, CAL.c.report).where(
                        CAL.c.model == model, CAL.c.id == calibration_id
                    )
                )
                .mappings()
                .first()
            )
        return None if row is None else _record(row, with_report=True)

    def list_calibrations(self, model: str) -> list[CalibrationRecord]:
        """Every calibration of `model`, newest first, without reports."""
        with self._read() as db:
            rows = (
                db.execute(
                    select(*LIST_COLUMNS).where(CAL.c.model == model).order_by(CAL.c.seq.desc())
                )
                .mappings()
                .all()
            )
        return [_record(row, with_report=False) for row in rows]

    @staticmethod
    def _transition(db: Connection, calibration_id: str, allowed: tuple[str, ...], to: str) -> Row:
        row = (
            db.execute(
                select(CAL.c.model, CAL.c.digest, CAL.c.status, CAL.c.activate).where(
                    CAL.c.id == calibration_id
                )
            )
            .mappings()
            .first()
        )
        if row is None:
            raise CalibrationNotFound(f"no calibration {calibration_id!r}")
        if row["status"] not in allowed:
            raise InvalidTransition(
                f"calibration {calibration_id!r} is {row['status']}; it cannot become {to}"
            )
        return row

    # Thresholds ------------------------------------------------------------------------------

    def active_threshold(self, model: str, digest: str) -> ActiveThreshold | None:
        """The threshold stored for this exact checkpoint, or None: use the checkpoint's default.

        From memory when this process knows nothing changed since; while the database fails,
        the last value known (`stale`); StoreFailing if there is none.
        """
        key = (model, digest)
        probing = self.outage.failing
        if probing and not self._may_probe():
            return self._last_known(key)
        try:
            self._follow_other_processes()
            with self._cache_lock:
                if key in self._active:
                    return self._active[key]
                generation = self._generation
            active = self._read_active(model, digest)
        except StoreFailing:
            self._probed = time.monotonic()
            return self._last_known(key)
        finally:
            if probing:
                self._probed = time.monotonic()
                self._probing.release()
        with self._cache_lock:
            if self._generation == generation:
                self._active[key] = active
                self._known[key] = active
        return active

    async def active_threshold_async(self, model: str, digest: str) -> ActiveThreshold | None:
        """`active_threshold` for async code: from memory, or read in a worker thread."""
        with self._cache_lock:
            fresh = time.monotonic() - self._checked < self.recheck_s
            if fresh and (model, digest) in self._active:
                return self._active[(model, digest)]
        if self.outage.failing and (model, digest) in self._known and not self._probe_due():
            return self._last_known((model, digest))  # no thread hop while nothing can change
        return await to_thread.run_sync(self.active_threshold, model, digest)

    def current_threshold(self, model: str, digest: str) -> ActiveThreshold | None:
        """The threshold stored for this checkpoint, read from the database now.

        For reads a client makes: a change acknowledged by any process is seen at once.
        Raises StoreFailing while the database fails.
        """
        active = self._read_active(model, digest)
        with self._cache_lock:
            self._known[(model, digest)] = active
        return active

    def state(self) -> str:
        """`writable`, `read-only: <why>` or `failing since <time>: <why>`, as of the last try.

        Asks the database first (at most every recheck_s; while it fails, every PROBE_EVERY_S
        and one caller at a time), so the answer holds without other traffic.
        """
        if self.read_only_because is not None:
            return f"read-only: {self.read_only_because}"
        probing = self.outage.failing
        if not probing or self._may_probe():
            try:
                if probing:
                    self._checked = -math.inf
                self._follow_other_processes()
            except StoreFailing:
                pass
            finally:
                if probing:
                    self._probed = time.monotonic()
                    self._probing.release()
        return "writable" if not self.outage.failing else self.outage.state()

    def _probe_due(self) -> bool:
        return time.monotonic() - self._probed >= PROBE_EVERY_S

    def _may_probe(self) -> bool:
        """During an outage: whether this caller may try the database (then holds `_probing`).

        At most one caller every PROBE_EVERY_S, so requests do not queue on a database that
        does not answer.
        """
        return self._probe_due() and self._probing.acquire(blocking=False)

    def _last_known(self, key: tuple[str, str]) -> ActiveThreshold | None:
        """The last threshold known for `key`, marked stale; StoreFailing if none is known."""
        with self._cache_lock:
            if key not in self._known:
                raise self.outage.error()
            known = self._known[key]
        return None if known is None else replace(known, stale=True)

    def _follow_other_processes(self) -> None:
        """Drop the cached thresholds if another process changed one (checked every recheck_s)."""
        # A read-only instance follows no one: a database from an earlier release may have no
        # version counter, and nothing it serves can be changed through it.
        if self.read_only_because is not None or time.monotonic() - self._checked < self.recheck_s:
            return
        with self._read() as db:
            version = db.execute(select(VERSION.c.version).where(VERSION.c.id == 1)).scalar_one()
        with self._cache_lock:
            self._checked = time.monotonic()
            if version != self._version:
                self._version = version
                self._generation += 1
                self._active.clear()

    def _read_active(self, model: str, digest: str) -> ActiveThreshold | None:
        with self._read() as db:
            row = (
                db.execute(
                    select(*ACTIVE_COLUMNS).where(AT.c.model == model, AT.c.digest == digest)
                )
                .mappings()
                .first()
            )
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
            stale = (
                db.execute(
                    select(AT.c.value, AT.c.source, AT.c.digest)
                    .where(AT.c.model == model)
                    .order_by(AT.c.updated.desc())
                    .limit(1)
                )
                .mappings()
                .first()
            )
            if stale is None:
                return False
            reason = (
                f"checkpoint changed: the {stale['source']} threshold {stale['value']:g} recorded "
                f"for digest {stale['digest'][:12]} does not apply to digest {digest[:12]}"
            )
            log.warning("model %s: %s; using the checkpoint's default", model, reason)
            seen = db.execute(
                select(HISTORY.c.seq).where(
                    HISTORY.c.model == model, HISTORY.c.digest == digest, HISTORY.c.reason == reason
                )
            ).first()
            if seen is None:
                db.execute(
                    insert(HISTORY).values(
                        at=_now(),
                        model=model,
                        digest=digest,
                        value=None,
                        source="default",
                        previous_value=stale["value"],
                        previous_source=stale["source"],
                        reason=reason,
                    )
                )
            return True

    def set_manual(
        self, model: str, digest: str, value: float, actor: str | None = None
    ) -> ActiveThreshold:
        """Make `value` the active threshold of this checkpoint (source `manual`)."""
        value = _finite(value, "threshold")
        with self._write() as db:
            active = self._set_active(db, model, digest, value, "manual", None, actor)
            version = self._bump(db)
        self._thresholds_changed(version, (model, digest), active)
        return active

    def activate_calibration(
        self, model: str, digest: str, calibration_id: str, actor: str | None = None
    ) -> ActiveThreshold:
        """Make a succeeded calibration of this checkpoint the active threshold."""
        with self._write() as db:
            row = (
                db.execute(
                    select(CAL.c.status, CAL.c.digest, CAL.c.threshold).where(
                        CAL.c.model == model, CAL.c.id == calibration_id
                    )
                )
                .mappings()
                .first()
            )
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
            version = self._bump(db)
        self._thresholds_changed(version, (model, digest), active)
        return active

    def reset_to_default(self, model: str, digest: str, actor: str | None = None) -> bool:
        """Drop this checkpoint's stored threshold so its default applies; False if none was set."""
        with self._write() as db:
            previous = self._current(db, model, digest)
            if previous is None:
                return False
            db.execute(delete(AT).where(AT.c.model == model, AT.c.digest == digest))
            self._audit(db, model, digest, None, "default", None, previous, actor)
            version = self._bump(db)
        self._thresholds_changed(version, (model, digest), None)
        return True

    def history(
        self, model: str, limit: int | None = None, offset: int = 0
    ) -> list[ThresholdChange]:
        """The audit trail of `model`'s threshold changes, newest first (`limit` of them)."""
        columns = [column for column in HISTORY.c if column.name != "seq"]
        query = (
            select(*columns)
            .where(HISTORY.c.model == model)
            .order_by(HISTORY.c.seq.desc())
            .limit(limit)
            .offset(offset or None)
        )
        with self._read() as db:
            rows = db.execute(query).mappings().all()
        return [
            ThresholdChange(**{**dict(row), "at": datetime.fromisoformat(row["at"])})
            for row in rows
        ]

    @staticmethod
    def _current(db: Connection, model: str, digest: str) -> Row | None:
        return (
            db.execute(
                select(AT.c.value, AT.c.source).where(AT.c.model == model, AT.c.digest == digest)
            )
            .mappings()
            .first()
        )

    def _set_active(
        self,
        db: Connection,
        model: str,
        digest: str,
        value: float,
        source: ThresholdSource,
        calibration_id: str | None,
        actor: str | None,
    ) -> ActiveThreshold:
        previous = self._current(db, model, digest)
        updated = _now()
        values = {"value": value, "source": source, "calibration_id": calibration_id}
        # Writes are serialised, so "update, else insert" cannot race another writer.
        if previous is None:
            db.execute(insert(AT).values(model=model, digest=digest, updated=updated, **values))
        else:
            db.execute(
                update(AT)
                .where(AT.c.model == model, AT.c.digest == digest)
                .values(updated=updated, **values)
            )
        self._audit(db, model, digest, value, source, calibration_id, previous, actor, updated)
        return ActiveThreshold(
            value, source, calibration_id, digest, datetime.fromisoformat(updated)
        )

    @staticmethod
    def _audit(
        db: Connection,
        model: str,
        digest: str,
        value: float | None,
        source: ThresholdSource,
        calibration_id: str | None,
        previous: Row | None,
        actor: str | None,
        at: str | None = None,
    ) -> None:
        db.execute(
            insert(HISTORY).values(
                at=at or _now(),
                model=model,
                digest=digest,
                value=value,
                source=source,
                calibration_id=calibration_id,
                previous_value=None if previous is None else previous["value"],
                previous_source="default" if previous is None else previous["source"],
                actor=actor,
            )
        )


def _active(row: Row) -> ActiveThreshold:
    return ActiveThreshold(
        value=row["value"],
        source=row["source"],
        calibration_id=row["calibration_id"],
        digest=row["digest"],
        updated=datetime.fromisoformat(row["updated"]),
    )


def _record(row: Row, with_report: bool) -> CalibrationRecord:
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

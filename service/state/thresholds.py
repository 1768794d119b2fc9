"""Active thresholds: what each checkpoint runs on, kept in memory and followed across processes.

Active thresholds are keyed by (model, checkpoint digest, class): a threshold recorded for one
checkpoint is never applied to another, yet comes back if that checkpoint does. A binary model's
class is "" (its one threshold); a multi-class model has one threshold per class name. Each process
keeps the thresholds in memory and drops them when it changes one, or when the shared version
counter shows another process did (checked at most every `recheck_s`). While the database fails,
inference reads the last thresholds this process knew, marked stale; reads made for a client
(`current_threshold`) go to the database, so a change another process acknowledged is seen at
once.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import replace
from datetime import datetime

from anyio import to_thread
from sqlalchemy import Connection, RowMapping, delete, insert, select, update

from service.state.errors import ActivationError, CalibrationNotFound, StoreFailing
from service.state.history import AuditTrail
from service.state.records import ActiveThreshold, ThresholdSource
from service.state.session import StateDatabase, finite, now_text
from service.state.tables import active_thresholds as AT
from service.state.tables import calibrations as CAL

log = logging.getLogger(__name__)

RECHECK_S = 0.25  # how often a process asks whether another one changed a threshold
PROBE_EVERY_S = 1.0  # during an outage, how often inference lets one request try the database
ACTIVE_COLUMNS = (AT.c.value, AT.c.source, AT.c.calibration_id, AT.c.digest, AT.c.updated)
Key = tuple[str, str, str]  # (model, checkpoint digest, class; "" for a binary model)


class Thresholds:
    """Reads and changes the active thresholds; thread-safe."""

    def __init__(
        self, database: StateDatabase, audit: AuditTrail, recheck_s: float = RECHECK_S
    ) -> None:
        """Thresholds kept in `database`, each change audited in `audit`."""
        self.database, self.audit, self.recheck_s = database, audit, recheck_s
        self.outage = database.outage
        # Every inference request reads its model's active threshold, so the answers are kept
        # in memory. They are dropped when this process changes a threshold (not at other
        # writes: a calibration's progress ticks must not send inference back to the database)
        # and when the shared version counter shows another process did, checked at most every
        # `recheck_s`. `_generation` keeps a read that raced a change out of the cache.
        self._active: dict[Key, ActiveThreshold | None] = {}
        self._generation = 0
        self._version: int | None = None
        self._checked = -math.inf
        self._cache_lock = threading.Lock()
        # The last threshold read or written per checkpoint, kept through cache drops: what
        # inference serves (marked stale) while the database fails.
        self._known: dict[Key, ActiveThreshold | None] = {}
        self._probing = threading.Lock()  # during an outage, one request at a time tries
        self._probed = -math.inf

    # Reads -------------------------------------------------------------------------------------

    def active_threshold(self, model: str, digest: str, cls: str = "") -> ActiveThreshold | None:
        """The threshold stored for this exact checkpoint, or None: use the checkpoint's default.

        From memory when this process knows nothing changed since; while the database fails,
        the last value known (`stale`); StoreFailing if there is none.
        """
        key = (model, digest, cls)
        probing = self.outage.failing
        if probing and not self._may_probe():
            return self._last_known(key)
        try:
            self._follow_other_processes()
            with self._cache_lock:
                if key in self._active:
                    return self._active[key]
                generation = self._generation
            active = self._read_active(model, digest, cls)
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

    async def active_threshold_async(
        self, model: str, digest: str, cls: str = ""
    ) -> ActiveThreshold | None:
        """`active_threshold` for async code: from memory, or read in a worker thread."""
        key = (model, digest, cls)
        with self._cache_lock:
            fresh = time.monotonic() - self._checked < self.recheck_s
            if fresh and key in self._active:
                return self._active[key]
        if self.outage.failing and key in self._known and not self._probe_due():
            return self._last_known(key)  # no thread hop while nothing can change
        return await to_thread.run_sync(self.active_threshold, model, digest, cls)

    def current_threshold(self, model: str, digest: str, cls: str = "") -> ActiveThreshold | None:
        """The threshold stored for this checkpoint, read from the database now.

        For reads a client makes: a change acknowledged by any process is seen at once.
        Raises StoreFailing while the database fails.
        """
        active = self._read_active(model, digest, cls)
        with self._cache_lock:
            self._known[(model, digest, cls)] = active
        return active

    def state(self) -> str:
        """`writable`, `read-only: <why>` or `failing since <time>: <why>`, as of the last try.

        Asks the database first (at most every recheck_s; while it fails, every PROBE_EVERY_S
        and one caller at a time), so the answer holds without other traffic.
        """
        if self.database.read_only_because is not None:
            return f"read-only: {self.database.read_only_because}"
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

    def _last_known(self, key: Key) -> ActiveThreshold | None:
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
        if (
            self.database.read_only_because is not None
            or time.monotonic() - self._checked < self.recheck_s
        ):
            return
        version = self.database.version()
        with self._cache_lock:
            self._checked = time.monotonic()
            if version != self._version:
                self._version = version
                self._generation += 1
                self._active.clear()

    def _read_active(self, model: str, digest: str, cls: str) -> ActiveThreshold | None:
        with self.database.read() as db:
            row = (
                db.execute(
                    select(*ACTIVE_COLUMNS).where(
                        AT.c.model == model, AT.c.digest == digest, AT.c.class_name == cls
                    )
                )
                .mappings()
                .first()
            )
        return None if row is None else _active(row)

    # Changes -----------------------------------------------------------------------------------

    def note_checkpoint(self, model: str, digest: str) -> bool:
        """At start-up: log and audit (once) a threshold of `model` left by another checkpoint.

        A threshold recorded for one checkpoint never applies to another, so a changed checkpoint
        runs on its default; this says so, and returns whether a stored threshold was ignored.
        """
        # A write of its own, called once per model at start-up: a read must never write.
        with self.database.write() as db:
            # Any class: a multi-class model's thresholds have class names, a binary one's "".
            here = select(AT.c.value).where(AT.c.model == model, AT.c.digest == digest)
            if db.execute(here.limit(1)).first() is not None:
                return False
            stale = (
                db.execute(
                    select(AT.c.value, AT.c.source, AT.c.digest)
                    .where(AT.c.model == model, AT.c.digest != digest)
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
            self.audit.note_once(db, model, digest, stale, reason)
            return True

    def set_manual(
        self, model: str, digest: str, value: float, actor: str | None = None, cls: str = ""
    ) -> ActiveThreshold:
        """Make `value` the active threshold of this checkpoint (source `manual`)."""
        value = finite(value, "threshold")
        with self.database.write() as db:
            active = self.set_active(db, model, digest, value, "manual", None, actor, cls)
            version = self.database.bump(db)
        self.changed(version, (model, digest, cls), active)
        return active

    def activate_calibration(
        self,
        model: str,
        digest: str,
        calibration_id: str,
        actor: str | None = None,
        class_values: dict[str, float] | None = None,
    ) -> ActiveThreshold:
        """Make a succeeded calibration of this checkpoint the active threshold.

        `class_values` (a multi-class calibration's threshold per class) sets every class's
        threshold in the one transaction; the answer is then the first class's.
        """
        with self.database.write() as db:
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
            values = {"": row["threshold"]} if class_values is None else class_values
            set_now = {
                cls: self.set_active(
                    db, model, digest, value, "calibration", calibration_id, actor, cls
                )
                for cls, value in values.items()
            }
            version = self.database.bump(db)
        for cls, active in set_now.items():
            self.changed(version, (model, digest, cls), active)
        return next(iter(set_now.values()))

    def reset_to_default(
        self, model: str, digest: str, actor: str | None = None, cls: str = ""
    ) -> bool:
        """Drop this checkpoint's stored threshold so its default applies; False if none was set."""
        with self.database.write() as db:
            previous = self.current(db, model, digest, cls)
            if previous is None:
                return False
            db.execute(
                delete(AT).where(AT.c.model == model, AT.c.digest == digest, AT.c.class_name == cls)
            )
            self.audit.record(db, model, digest, None, "default", None, previous, actor, cls=cls)
            version = self.database.bump(db)
        self.changed(version, (model, digest, cls), None)
        return True

    def changed(self, version: int, key: Key, active: ActiveThreshold | None) -> None:
        """After a threshold-changing commit: drop what memory holds, remember `active`."""
        # After the commit: a read that began before it sees a newer generation and leaves the
        # cache alone, so a stale answer never outlives the change.
        with self._cache_lock:
            self._generation += 1
            self._active.clear()
            self._version = max(version, self._version or 0)
            self._known[key] = active

    @staticmethod
    def current(db: Connection, model: str, digest: str, cls: str = "") -> RowMapping | None:
        """In a transaction: the stored threshold row of this checkpoint (value, source)."""
        return (
            db.execute(
                select(AT.c.value, AT.c.source).where(
                    AT.c.model == model, AT.c.digest == digest, AT.c.class_name == cls
                )
            )
            .mappings()
            .first()
        )

    def set_active(
        self,
        db: Connection,
        model: str,
        digest: str,
        value: float,
        source: ThresholdSource,
        calibration_id: str | None,
        actor: str | None,
        cls: str = "",
    ) -> ActiveThreshold:
        """In a write: make `value` this checkpoint's threshold and audit it (call `changed`
        once committed)."""
        previous = self.current(db, model, digest, cls)
        updated = now_text()
        values = {"value": value, "source": source, "calibration_id": calibration_id}
        # Writes are serialised, so "update, else insert" cannot race another writer.
        if previous is None:
            db.execute(
                insert(AT).values(
                    model=model, digest=digest, class_name=cls, updated=updated, **values
                )
            )
        else:
            db.execute(
                update(AT)
                .where(AT.c.model == model, AT.c.digest == digest, AT.c.class_name == cls)
                .values(updated=updated, **values)
            )
        self.audit.record(
            db, model, digest, value, source, calibration_id, previous, actor, updated, cls
        )
        return ActiveThreshold(
            value, source, calibration_id, digest, datetime.fromisoformat(updated)
        )


def _active(row: RowMapping) -> ActiveThreshold:
    return ActiveThreshold(
        value=row["value"],
        source=row["source"],
        calibration_id=row["calibration_id"],
        digest=row["digest"],
        updated=datetime.fromisoformat(row["updated"]),
    )

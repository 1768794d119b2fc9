"""The calibration job queue: records, their life cycle, leases and which processes are gone.

Several processes may share the database. Each job carries a lease that its process renews (see
`renew_leases`); an expired lease means its process is gone, and any process fails the job
(`fail_expired`). At most one job of a model runs at a time across every process: claiming the
run (`mark_running`) fails while another runs, and the database's unique index guarantees it.
A process is named by host, pid and a nonce (`process_owner`): at start-up, a job or an uploads
folder whose owner was a pid of this host that no longer runs is known to be abandoned at once.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from datetime import datetime

from sqlalchemy import ColumnElement, Connection, RowMapping, insert, or_, select, update

from model.calibration import CalibrationReport, MultiClassReport
from service.state.errors import CalibrationNotFound, InvalidTransition
from service.state.records import ActiveThreshold, CalibrationRecord, JobParams, read_report
from service.state.session import StateDatabase, finite, now_text
from service.state.tables import calibrations as CAL
from service.state.thresholds import Thresholds

log = logging.getLogger(__name__)

LEASE_S = 15.0  # a job whose process has not vouched for it this long is failed by any process
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


def _time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


class CalibrationQueue:
    """Records calibration jobs and moves them through queued, running, succeeded or failed."""

    def __init__(
        self, database: StateDatabase, thresholds: Thresholds, lease_s: float = LEASE_S
    ) -> None:
        """Jobs kept in `database`; a finished job activates through `thresholds`."""
        self.database, self.thresholds, self.lease_s = database, thresholds, lease_s
        self.owner = process_owner()

    # This process and the ones that are gone ---------------------------------------------------

    @property
    def renew_every_s(self) -> float:
        """How often this process must renew its leases to keep them: a third of a lease."""
        return self.lease_s / 3

    @property
    def folder_name(self) -> str:
        """A file name for this process's own folder (its uploads), unique to this process."""
        return self.owner.replace("/", "_")

    def folder_left_behind(self, name: str) -> bool:
        """Whether the folder called `name` belonged to a process that no longer runs.

        Names not made by `folder_name` (an older release's) count as left behind.
        """
        owner = name.replace("_", "/")
        return owner.count("/") != 2 or owner_is_gone(owner, self.owner)

    # Life cycle --------------------------------------------------------------------------------

    def new_calibration(
        self,
        model: str,
        digest: str,
        strategy: str,
        target: float | None,
        params: JobParams,
        activate: bool,
    ) -> CalibrationRecord:
        """Record a queued calibration job, owned by this process; the record as written."""
        calibration_id, created = new_id(), now_text()
        with self.database.write() as db:
            db.execute(
                insert(CAL).values(
                    id=calibration_id,
                    model=model,
                    digest=digest,
                    strategy=strategy,
                    target=target,
                    params=params.to_json(),
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
            params=params,
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
        """Claim the run: move a queued job to running; False while another job of its model
        runs anywhere (ask again after the next lease round, not in a loop)."""
        with self.database.write() as db:
            row = _transition(db, calibration_id, ("queued",), "running")
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
                    started=now_text(),
                    owner=self.owner,
                    lease_until=time.time() + self.lease_s,
                )
            )
        return True

    def set_progress(self, calibration_id: str, progress: float) -> None:
        """Record a job's progress in [0, 1]; ignored once the job has finished."""
        progress = min(max(finite(progress, "progress"), 0.0), 1.0)
        with self.database.write() as db:
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
        with self.database.write() as db:
            result = db.execute(
                update(CAL).where(*owned).values(lease_until=time.time() + self.lease_s)
            )
            return result.rowcount

    def fail_expired(self, reason: str) -> int:
        """Mark failed every unfinished job whose process stopped renewing its lease.

        Not until the database has answered this process for a whole lease: a database outage
        stops every process from renewing, and their jobs are not abandoned for that.
        """
        if time.monotonic() - self.database.outage.answering_since < self.lease_s:
            return 0
        with self.database.write() as db:
            result = db.execute(
                update(CAL)
                .where(CAL.c.status.in_(UNFINISHED), CAL.c.lease_until < time.time())
                .values(status="failed", error=reason, finished=now_text())
            )
            return result.rowcount

    def finish_calibration(
        self,
        calibration_id: str,
        report: CalibrationReport | MultiClassReport,
        activate: bool | None = None,
    ) -> ActiveThreshold | None:
        """Store a job's report (its threshold and AUC with it) and, if `activate` (None: as
        asked at creation), make its threshold the active one.

        A multi-class report stores no single threshold and the mean of its classes' AUCs, and
        activates every class's threshold (the answer is then the first class's).
        """
        if isinstance(report, MultiClassReport):
            values: dict[str, float] = report.thresholds
            aucs = [r.auc for r in report.classes.values() if r.auc is not None]
            threshold, auc = None, (sum(aucs) / len(aucs) if aucs else None)
        else:
            values, threshold, auc = {"": report.threshold}, report.threshold, report.auc
        # One transaction for both: a crash never leaves a succeeded calibration that was meant
        # to be active but is not.
        with self.database.write() as db:
            row = _transition(db, calibration_id, UNFINISHED, "succeeded")
            db.execute(
                update(CAL)
                .where(CAL.c.id == calibration_id)
                .values(
                    status="succeeded",
                    progress=1,
                    threshold=threshold,
                    auc=auc,
                    report=report.to_json(),
                    finished=now_text(),
                )
            )
            if not (bool(row["activate"]) if activate is None else activate):
                return None
            model, digest = row["model"], row["digest"]
            written = {
                cls: self.thresholds.set_active(
                    db, model, digest, value, "calibration", calibration_id, None, cls
                )
                for cls, value in values.items()
            }
            version = self.database.bump(db)
        for cls, active in written.items():
            self.thresholds.changed(version, (model, digest, cls), active)
        return next(iter(written.values()))

    def fail_calibration(self, calibration_id: str, error: str) -> None:
        """Mark a queued or running job failed with a message a person can act on."""
        with self.database.write() as db:
            _transition(db, calibration_id, UNFINISHED, "failed")
            db.execute(
                update(CAL)
                .where(CAL.c.id == calibration_id)
                .values(status="failed", error=error, finished=now_text())
            )

    def fail_interrupted(self, reason: str) -> int:
        """At start-up: fail the jobs a stopped process left (this host's dead pids, expired
        leases, or no owner at all); returns how many. Live processes' jobs are left alone."""
        with self.database.write() as db:
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
                .values(status="failed", error=reason, finished=now_text())
            )
            return result.rowcount

    # Reads -------------------------------------------------------------------------------------

    def get_calibration(self, model: str, calibration_id: str) -> CalibrationRecord | None:
        """One calibration of `model` with its report, or None."""
        with self.database.read() as db:
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
        with self.database.read() as db:
            rows = (
                db.execute(
                    select(*LIST_COLUMNS).where(CAL.c.model == model).order_by(CAL.c.seq.desc())
                )
                .mappings()
                .all()
            )
        return [_record(row, with_report=False) for row in rows]


def _transition(
    db: Connection, calibration_id: str, allowed: tuple[str, ...], to: str
) -> RowMapping:
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


def _record(row: RowMapping, with_report: bool) -> CalibrationRecord:
    return CalibrationRecord(
        id=row["id"],
        model=row["model"],
        digest=row["digest"],
        status=row["status"],
        strategy=row["strategy"],
        target=row["target"],
        params=JobParams.from_json(row["params"]),
        activate=bool(row["activate"]),
        progress=row["progress"],
        threshold=row["threshold"],
        auc=row["auc"],
        error=row["error"],
        created=datetime.fromisoformat(row["created"]),
        started=_time(row["started"]),
        finished=_time(row["finished"]),
        report=read_report(row["report"], row["id"]) if with_report else None,
    )

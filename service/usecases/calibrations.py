"""Calibrations as a client uses them: start one, read one or all, activate one.

The activation gate lives here (with its rules in service/calibration/gate.py): a calibration
whose report has blocking warnings becomes active only when forced, and only a succeeded
calibration of the current checkpoint can. Errors are typed (service/calibration/errors.py,
service/state/errors.py); the HTTP edge maps them to problems.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from model.calibration import CalibrationReport, MultiClassReport
from service.calibration.errors import (
    CalibrationBlocked,
    CalibrationFailed,
    CalibrationNotFinished,
    CalibrationNotSucceeded,
    UnknownCalibration,
)
from service.calibration.gate import blocked_reason, blocking_codes
from service.calibration.jobs import CalibrationParams
from service.container import Services
from service.inference.registry import ServedModel
from service.state.errors import CalibrationNotFound, StoreUnavailable
from service.state.records import ActiveThreshold, CalibrationRecord
from service.usecases.thresholds import publish_threshold, publish_thresholds


@dataclass(frozen=True)
class CalibrationView:
    """A calibration as a client sees it: its record, and what it means for the model now."""

    record: CalibrationRecord
    active: bool  # its threshold is the one in force
    activation_blocked: str | None = None  # why, asked to activate, it was not


async def start_calibration(
    services: Services,
    served: ServedModel,
    data: bytes,
    filename: str | None,
    params: CalibrationParams,
) -> CalibrationView:
    """Check and extract the zip in `data` and queue its job; the job as it stands now.

    Raises DatasetRejected, CalibrationRefused or StoreUnavailable when no job was queued.
    """
    created = await services.jobs.start(served, data, filename, params)
    # The database is read in a worker thread: the event loop must not wait on it.
    try:
        return await asyncio.to_thread(calibration, services, served, created.id)
    except StoreUnavailable:
        # The job exists and runs: an error now would make a client start another.
        return CalibrationView(created, active=False)


def calibration(services: Services, served: ServedModel, calibration_id: str) -> CalibrationView:
    """One calibration with its report; UnknownCalibration if the model has none of that id."""
    record = _record(services, served, calibration_id)
    active_id = _active_calibration(services, served)
    blocked = None
    codes = blocking_codes(record.report)
    if codes and record.activate and not record.params.force:
        blocked = blocked_reason(codes)
    return CalibrationView(record, record.id == active_id, blocked)


def calibrations(services: Services, served: ServedModel) -> list[CalibrationView]:
    """Every calibration of the model, newest first, without reports."""
    active_id = _active_calibration(services, served)
    records = services.store.list_calibrations(served.name)
    return [CalibrationView(record, record.id == active_id) for record in records]


def succeeded_report(
    services: Services, served: ServedModel, calibration_id: str, what: str, cls: str = ""
) -> CalibrationReport:
    """The report of a succeeded calibration, which `what` needs; CalibrationNotSucceeded else.

    A multi-class calibration's: class `cls`'s (the caller checked the model has it).
    """
    record = _succeeded(_record(services, served, calibration_id), what)
    if record.report is None:  # stored by a release whose report this one cannot read
        raise CalibrationNotSucceeded(
            f"calibration {calibration_id!r} has no report this version can read; "
            "run the calibration again"
        )
    if isinstance(record.report, MultiClassReport):
        return record.report.classes[cls or served.classes[0]]
    return record.report


def activate_calibration(
    services: Services,
    served: ServedModel,
    calibration_id: str,
    actor: str | None = None,
    force: bool = False,
) -> ActiveThreshold:
    """Make the calibration's threshold the one in force, as written (never read back).

    Raises UnknownCalibration, CalibrationNotSucceeded, CalibrationBlocked (blocking warnings
    and not `force`) or ActivationError (made for another checkpoint).
    """
    record = _succeeded(_record(services, served, calibration_id), "activation")
    codes = blocking_codes(record.report)
    if codes and not force:
        raise CalibrationBlocked(
            f"calibration {calibration_id!r} has blocking warnings ({', '.join(codes)}); read "
            "them in its report.warnings and fix the calibration set, or activate anyway with "
            "?force=true"
        )
    report = record.report
    class_values = report.thresholds if isinstance(report, MultiClassReport) else None
    try:
        active = services.store.activate_calibration(
            served.name, served.digest, calibration_id, actor=actor, class_values=class_values
        )
    except CalibrationNotFound:
        _record(services, served, calibration_id)  # raises UnknownCalibration
        raise
    if class_values is not None:
        publish_thresholds(services, served)
    else:
        publish_threshold(services.metrics, served.name, active)
    services.metrics.threshold_changed(served.name, "calibration")
    return active


def _active_calibration(services: Services, served: ServedModel) -> str | None:
    """The calibration whose threshold is in force (multi-class: for every class), or None."""
    if not served.multi_class:
        return services.active_threshold(served).calibration_id
    found = {a.calibration_id for a in services.class_thresholds(served).values()}
    return found.pop() if len(found) == 1 else None


def _record(services: Services, served: ServedModel, calibration_id: str) -> CalibrationRecord:
    record = services.store.get_calibration(served.name, calibration_id)
    if record is None:
        raise UnknownCalibration(
            f"model {served.name!r} has no calibration {calibration_id!r}; "
            f"GET /v1/models/{served.name}/calibrations lists them"
        )
    return record


def _succeeded(record: CalibrationRecord, what: str) -> CalibrationRecord:
    if record.status != "succeeded":
        reason = f": {record.error}" if record.error else ""
        pending = record.status in ("queued", "running")
        error = CalibrationNotFinished if pending else CalibrationFailed
        raise error(
            f"calibration {record.id!r} is {record.status}{reason}; {what} needs a succeeded "
            "calibration"
        )
    return record

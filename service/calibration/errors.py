"""Why a calibration could not be started or used, in the calibration's own terms, not HTTP's.

Each error's message says what is wrong and what to do, for a person. The HTTP edge turns these
into problem details (`service.api.errors`).
"""

from __future__ import annotations

from enum import Enum


class Rejection(Enum):
    """What is wrong with an uploaded data set."""

    TOO_MANY_ENTRIES = "the zip holds too many entries"
    ZIP_TOO_LARGE = "the zip expands past the size limit"
    IMAGE_TOO_LARGE = "an image has more pixels than allowed"
    UNREADABLE_ZIP = "the zip or one of its entries cannot be read"
    UNSAFE_ENTRY = "an entry must not be extracted (its name or its type)"
    INVALID_DATASET = "the files are not a data set of images/ and masks/"
    UNREADABLE_IMAGE = "an image cannot be decoded"


class DatasetRejected(Exception):
    """An uploaded data set that cannot be calibrated on; the message names the entry."""

    def __init__(self, kind: Rejection, message: str) -> None:
        """`kind` of problem; `message` says which entry and what to fix."""
        super().__init__(message)
        self.kind = kind


class CalibrationRefused(Exception):
    """A calibration is not accepted now; `retry_after` whole seconds may change that."""

    def __init__(self, message: str, retry_after: int | None) -> None:
        """`message` for a person; `retry_after` when trying again makes sense, if known."""
        super().__init__(message)
        self.retry_after = retry_after


class CalibrationsStopping(CalibrationRefused):
    """The service is shutting down and takes no new calibration."""


class TooManyCalibrations(CalibrationRefused):
    """The model has as many calibrations queued or running as it may."""


class UnknownCalibration(LookupError):
    """The model has no calibration of that id; the message says where the ids are listed."""


class CalibrationNotSucceeded(Exception):
    """The step needs a succeeded calibration and this one is not (yet)."""


class CalibrationNotFinished(CalibrationNotSucceeded):
    """The calibration is still queued or running."""


class CalibrationFailed(CalibrationNotSucceeded):
    """The calibration failed; the message says why."""


class CalibrationBlocked(Exception):
    """The calibration's report has blocking warnings and activation was not forced."""

"""The HTTP answer to each error of the code below the edge, in one table.

The engine, the use cases, the data-set intake and the calibration jobs raise errors in their
own terms (`service.inference.errors`, `service.usecases`, `service.calibration.errors`) whose
messages are written for a person; here each becomes a problem: status, title and type, the
message as its detail, and a `Retry-After` header where the error says when trying again makes
sense.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from model.errors import NonFiniteOutputError
from service.api.problems import ProblemError, answer_problem
from service.calibration.errors import (
    CalibrationBlocked,
    CalibrationFailed,
    CalibrationNotFinished,
    CalibrationNotSucceeded,
    CalibrationRefused,
    CalibrationsStopping,
    DatasetRejected,
    Rejection,
    TooManyCalibrations,
    UnknownCalibration,
)
from service.inference.errors import (
    DeviceOutOfMemory,
    EngineBusy,
    EngineError,
    EngineNotReady,
    EngineTimeout,
    ModelUnavailable,
)
from service.state.errors import (
    ActivationError,
    StoreFailing,
    StoreFull,
    StoreReadOnly,
    StoreUnavailable,
)
from service.usecases.segment import ImageRejected, ImageTooLarge, UnreadableImage
from service.usecases.thresholds import ThresholdOutOfRange

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Answer:
    """How one kind of error is answered over HTTP."""

    status: int
    title: str
    slug: str  # names the problem type, under service.api.problems.TYPE_BASE


DomainError = (
    EngineError
    | DatasetRejected
    | CalibrationRefused
    | StoreUnavailable
    | NonFiniteOutputError
    | UnknownCalibration
    | CalibrationNotSucceeded
    | CalibrationBlocked
    | ActivationError
    | ImageRejected
    | ThresholdOutOfRange
)
DOMAIN_ERRORS = (
    EngineError,
    DatasetRejected,
    CalibrationRefused,
    StoreUnavailable,
    NonFiniteOutputError,
    UnknownCalibration,
    CalibrationNotSucceeded,
    CalibrationBlocked,
    ActivationError,
    ImageRejected,
    ThresholdOutOfRange,
)

# Keyed by error class, or for a rejected data set by what is wrong with it.
ANSWERS: dict[type[Exception] | Rejection, Answer] = {
    EngineBusy: Answer(503, "Service overloaded", "overloaded"),
    EngineTimeout: Answer(503, "Request timed out", "inference-timeout"),
    EngineNotReady: Answer(503, "Not ready", "not-ready"),
    DeviceOutOfMemory: Answer(503, "Out of memory", "out-of-memory"),
    ModelUnavailable: Answer(503, "Model unavailable", "model-unavailable"),
    CalibrationsStopping: Answer(503, "Service stopping", "stopping"),
    TooManyCalibrations: Answer(429, "Too many calibrations", "too-many-calibrations"),
    UnknownCalibration: Answer(404, "Unknown calibration", "unknown-calibration"),
    CalibrationNotFinished: Answer(409, "Calibration not finished", "calibration-not-succeeded"),
    CalibrationFailed: Answer(409, "Calibration failed", "calibration-not-succeeded"),
    CalibrationBlocked: Answer(409, "Calibration blocked", "calibration-blocked"),
    ActivationError: Answer(409, "Cannot activate", "calibration-not-activatable"),
    StoreFull: Answer(507, "State disk full", "state-disk-full"),
    StoreReadOnly: Answer(503, "State folder read-only", "state-read-only"),
    StoreFailing: Answer(503, "Threshold database failing", "state-failing"),
    NonFiniteOutputError: Answer(422, "Non-finite model output", "non-finite-output"),
    ImageTooLarge: Answer(413, "Image too large", "image-too-large"),
    UnreadableImage: Answer(422, "Unreadable image", "unreadable-image"),
    ThresholdOutOfRange: Answer(422, "Threshold out of range", "threshold-out-of-range"),
    Rejection.TOO_MANY_ENTRIES: Answer(413, "Zip has too many entries", "zip-too-many-entries"),
    Rejection.ZIP_TOO_LARGE: Answer(413, "Zip too large", "zip-too-large"),
    Rejection.IMAGE_TOO_LARGE: Answer(413, "Image too large", "image-too-large"),
    Rejection.UNREADABLE_ZIP: Answer(422, "Unreadable zip", "unreadable-zip"),
    Rejection.UNSAFE_ENTRY: Answer(422, "Unsafe zip entry", "unsafe-zip-entry"),
    Rejection.INVALID_DATASET: Answer(422, "Invalid data set", "invalid-dataset"),
    Rejection.UNREADABLE_IMAGE: Answer(422, "Unreadable image", "unreadable-image"),
}


def problem_for(error: DomainError) -> ProblemError:
    """The problem that answers `error`."""
    if isinstance(error, DatasetRejected):
        answer, retry_after = ANSWERS[error.kind], None
    else:
        # The nearest class in the table: a subclass is answered like its parent.
        key = next(cls for cls in type(error).__mro__ if cls in ANSWERS)
        answer, retry_after = ANSWERS[key], getattr(error, "retry_after", None)
    headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
    return ProblemError(answer.status, answer.title, str(error), slug=answer.slug, headers=headers)


async def _answer(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, DOMAIN_ERRORS)
    return await answer_problem(request, problem_for(error))


def install_error_answers(app: FastAPI) -> None:
    """Answer the domain errors of `app`'s services as the table above says."""
    for kind in DOMAIN_ERRORS:
        app.add_exception_handler(kind, _answer)

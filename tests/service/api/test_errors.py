"""The HTTP edge's table: each error of the engine, the intake and the jobs, as a client sees it."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from model.errors import NonFiniteOutputError
from service.api.errors import ANSWERS, DomainError, install_error_answers
from service.api.problems import MEDIA_TYPE, TYPE_BASE, install_problem_handlers
from service.calibration.errors import (
    CalibrationBlocked,
    CalibrationFailed,
    CalibrationNotFinished,
    CalibrationsStopping,
    DatasetRejected,
    Rejection,
    TooManyCalibrations,
    UnknownCalibration,
)
from service.inference.errors import (
    DeviceOutOfMemory,
    EngineBusy,
    EngineNotReady,
    EngineTimeout,
    ModelUnavailable,
)
from service.state.errors import ActivationError, StoreFailing, full, read_only
from service.usecases.segment import ImageTooLarge, UnreadableImage
from service.usecases.thresholds import ThresholdOutOfRange

# error -> (status, title, slug, detail, Retry-After); the answers the service has always given.
CASES: list[tuple[DomainError, tuple[int, str, str, str, str | None]]] = [
    (
        full("/state"),
        (
            507,
            "State disk full",
            "state-disk-full",
            "the disk of UNET_STATE_DIR (/state) is full; free space there and retry "
            "(the service keeps serving inference meanwhile)",
            None,
        ),
    ),
    (
        read_only("Read-only file system (/state)"),
        (
            503,
            "State folder read-only",
            "state-read-only",
            "the state folder is read-only: Read-only file system (/state); make UNET_STATE_DIR "
            "writable and restart (the service serves inference meanwhile)",
            None,
        ),
    ),
    (
        StoreFailing("the threshold database is failing (OperationalError: refused); try again"),
        (
            503,
            "Threshold database failing",
            "state-failing",
            "the threshold database is failing (OperationalError: refused); try again",
            "5",
        ),
    ),
    (
        EngineBusy("m", 64, 3),
        (
            503,
            "Service overloaded",
            "overloaded",
            "model 'm' already has 64 requests waiting (UNET_QUEUE_SIZE); retry after 3 s",
            "3",
        ),
    ),
    (
        EngineTimeout("m", 30.0, 2),
        (
            503,
            "Request timed out",
            "inference-timeout",
            "model 'm' did not answer within 30.0 s (UNET_REQUEST_TIMEOUT_S) because the "
            "service is busy; retry after 2 s",
            "2",
        ),
    ),
    (
        EngineNotReady("the inference engine is starting or stopping; retry shortly"),
        (
            503,
            "Not ready",
            "not-ready",
            "the inference engine is starting or stopping; retry shortly",
            "1",
        ),
    ),
    (
        DeviceOutOfMemory("m"),
        (
            503,
            "Out of memory",
            "out-of-memory",
            "the device ran out of memory running model 'm'; retry later or lower "
            "UNET_MAX_BATCH or UNET_TILE_SIZE",
            "5",
        ),
    ),
    (
        NonFiniteOutputError("model 'm' gave 3 non-finite outputs"),
        (
            422,
            "Non-finite model output",
            "non-finite-output",
            "model 'm' gave 3 non-finite outputs",
            None,
        ),
    ),
    (
        ModelUnavailable("m", "m.json: source.path is missing; name the network file"),
        (
            503,
            "Model unavailable",
            "model-unavailable",
            "model 'm' is unavailable: m.json: source.path is missing; name the network file; "
            "fix it and restart the service",
            None,
        ),
    ),
    (
        CalibrationsStopping("the service is shutting down", retry_after=5),
        (503, "Service stopping", "stopping", "the service is shutting down", "5"),
    ),
    (
        CalibrationsStopping("the service stopped before this calibration started", None),
        (
            503,
            "Service stopping",
            "stopping",
            "the service stopped before this calibration started",
            None,
        ),
    ),
    (
        TooManyCalibrations("model 'm' already has 16 calibrations queued", retry_after=10),
        (
            429,
            "Too many calibrations",
            "too-many-calibrations",
            "model 'm' already has 16 calibrations queued",
            "10",
        ),
    ),
    (
        DatasetRejected(Rejection.TOO_MANY_ENTRIES, "the zip holds 51 entries"),
        (413, "Zip has too many entries", "zip-too-many-entries", "the zip holds 51 entries", None),
    ),
    (
        DatasetRejected(Rejection.ZIP_TOO_LARGE, "the zip expands to 9 bytes"),
        (413, "Zip too large", "zip-too-large", "the zip expands to 9 bytes", None),
    ),
    (
        DatasetRejected(Rejection.IMAGE_TOO_LARGE, "images/a.png: image is 200 x 200"),
        (413, "Image too large", "image-too-large", "images/a.png: image is 200 x 200", None),
    ),
    (
        DatasetRejected(Rejection.UNREADABLE_ZIP, "the dataset is not a readable zip file"),
        (422, "Unreadable zip", "unreadable-zip", "the dataset is not a readable zip file", None),
    ),
    (
        DatasetRejected(Rejection.UNSAFE_ENTRY, "entry '../x' climbs out of the zip"),
        (422, "Unsafe zip entry", "unsafe-zip-entry", "entry '../x' climbs out of the zip", None),
    ),
    (
        DatasetRejected(Rejection.INVALID_DATASET, "no mask for 1 image(s)"),
        (422, "Invalid data set", "invalid-dataset", "no mask for 1 image(s)", None),
    ),
    (
        DatasetRejected(Rejection.UNREADABLE_IMAGE, "images/a.png: cannot identify image"),
        (422, "Unreadable image", "unreadable-image", "images/a.png: cannot identify image", None),
    ),
    (
        UnknownCalibration("model 'm' has no calibration 'c1'"),
        (
            404,
            "Unknown calibration",
            "unknown-calibration",
            "model 'm' has no calibration 'c1'",
            None,
        ),
    ),
    (
        CalibrationNotFinished("calibration 'c1' is running; activation needs a succeeded one"),
        (
            409,
            "Calibration not finished",
            "calibration-not-succeeded",
            "calibration 'c1' is running; activation needs a succeeded one",
            None,
        ),
    ),
    (
        CalibrationFailed("calibration 'c1' is failed: boom"),
        (
            409,
            "Calibration failed",
            "calibration-not-succeeded",
            "calibration 'c1' is failed: boom",
            None,
        ),
    ),
    (
        CalibrationBlocked("calibration 'c1' has blocking warnings (auc_drop)"),
        (
            409,
            "Calibration blocked",
            "calibration-blocked",
            "calibration 'c1' has blocking warnings (auc_drop)",
            None,
        ),
    ),
    (
        ActivationError("calibration 'c1' was made for another checkpoint"),
        (
            409,
            "Cannot activate",
            "calibration-not-activatable",
            "calibration 'c1' was made for another checkpoint",
            None,
        ),
    ),
    (
        ImageTooLarge("x.png: image is 5000 x 5000, over 16777216 pixels"),
        (
            413,
            "Image too large",
            "image-too-large",
            "x.png: image is 5000 x 5000, over 16777216 pixels",
            None,
        ),
    ),
    (
        UnreadableImage("x.png: cannot identify image"),
        (422, "Unreadable image", "unreadable-image", "x.png: cannot identify image", None),
    ),
    (
        ThresholdOutOfRange("threshold 1.5 is outside the sigmoid head's output range [0, 1]"),
        (
            422,
            "Threshold out of range",
            "threshold-out-of-range",
            "threshold 1.5 is outside the sigmoid head's output range [0, 1]",
            None,
        ),
    ),
]


@pytest.fixture(scope="module")
def client() -> TestClient:
    """An app whose route `/fail/{n}` raises the n-th error of CASES."""
    app = FastAPI()
    install_problem_handlers(app)
    install_error_answers(app)

    @app.get("/fail/{n}")
    def fail(n: int) -> None:
        raise CASES[n][0]

    return TestClient(app)


@pytest.mark.parametrize("n", range(len(CASES)), ids=[type(e).__name__ for e, _ in CASES])
def test_each_error_has_its_answer(client: TestClient, n: int) -> None:
    status, title, slug, detail, retry_after = CASES[n][1]
    response = client.get(f"/fail/{n}")
    assert response.status_code == status
    assert response.headers["content-type"] == MEDIA_TYPE
    assert response.json() == {
        "type": TYPE_BASE + slug,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": f"/fail/{n}",
    }
    assert response.headers.get("retry-after") == retry_after


def test_the_table_answers_every_kind_of_rejection() -> None:
    assert set(Rejection) <= set(ANSWERS)
    answered = {type(error) for error, _ in CASES} | {
        error.kind for error, _ in CASES if isinstance(error, DatasetRejected)
    }
    assert set(ANSWERS) <= answered  # and this test covers every row of the table

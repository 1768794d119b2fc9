"""Drift: how far a model's served scores have moved from its active calibration's."""

from __future__ import annotations

from fastapi import APIRouter

from model.calibration.drift import PSI_ALERT, PSI_WARN
from service.api.dependencies import ModelDep, ServicesDep
from service.api.problems import ProblemError, problem_responses
from service.api.routes.class_answers import ClassQuery, check_class
from service.api.schemas import Drift, ForegroundFractions

router = APIRouter(prefix="/v1/models/{model}", tags=["models"])


@router.get(
    "/drift", name="drift", summary="Drift of served images", responses=problem_responses(404, 422)
)
def get_drift(services: ServicesDep, served: ModelDep, class_: ClassQuery = None) -> Drift:
    """PSI of the last `window` served images' scores against the active calibration's.

    Multi-class models: `?class=name` (required) answers that class's window, against the
    class's profile in the calibration in force for it.
    """
    check_class(served, class_)
    if served.multi_class:
        if class_ is None:
            raise ProblemError(
                422,
                "Which class?",
                f"model {served.name!r} is watched per class; ask for one with class=NAME, one "
                f"of {', '.join(served.classes)}",
                slug="class-required",
            )
        active = services.class_thresholds(served)[class_]
        view = services.drift.report(served.name, active.calibration_id, class_)
    else:
        active = services.active_threshold(served)
        view = services.drift.report(served.name, active.calibration_id)
    return Drift(
        status=view.status,
        n_images=view.n_images,
        window=view.window,
        score_distance=view.score_distance,
        foreground_fraction=ForegroundFractions(
            served=view.served_fraction, calibration=view.calibration_fraction
        ),
        calibration_id=view.calibration_id,
        cutoffs={"warn": PSI_WARN, "alert": PSI_ALERT},
        min_images=services.settings.drift_min_images,
    )

"""Reading and overriding a model's active threshold."""

from __future__ import annotations

import math

from fastapi import APIRouter

from service.api.dependencies import Authorized, ModelDep, ServicesDep
from service.api.problems import ProblemError, problem_responses
from service.api.routes.models import threshold_view
from service.api.schemas import Threshold, ThresholdUpdate
from service.inference.registry import ServedModel

router = APIRouter(prefix="/v1/models/{model}/threshold", tags=["thresholds"])

PROBLEMS = problem_responses(401, 404, 422)


def check_threshold(served: ServedModel, value: float, name: str = "threshold") -> float:
    """`value` if it is a finite number inside the head's output range, else a 422 problem."""
    low, high = served.output_range
    if not math.isfinite(value) or not low <= value <= high:
        interval = f"[{low:g}, {high:g}]".replace("inf", "∞")
        raise ProblemError(
            422,
            "Threshold out of range",
            f"{name} {value!r} is outside the {served.head} head's output range {interval} "
            f"of model {served.name!r}; give a finite value inside it",
            slug="threshold-out-of-range",
        )
    return value


@router.get("", name="get", summary="The active threshold", responses=PROBLEMS)
def get_threshold(services: ServicesDep, served: ModelDep) -> Threshold:
    """The threshold in force and its source: default, calibration or manual."""
    return threshold_view(services, served)


@router.put(
    "",
    name="set",
    summary="Override the threshold by hand",
    dependencies=[Authorized],
    responses=PROBLEMS,
)
def put_threshold(services: ServicesDep, served: ModelDep, update: ThresholdUpdate) -> Threshold:
    """Make `value` the active threshold (source `manual`) until the next change."""
    value = check_threshold(served, update.value, "value")
    services.store.set_manual(served.name, served.digest, value, actor=None)
    services.metrics.set_threshold(served.name, value)
    return threshold_view(services, served)

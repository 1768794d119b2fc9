"""Reading, overriding and resetting a model's active threshold, and its history."""

from __future__ import annotations

import math

from fastapi import APIRouter

from service.api.dependencies import Actor, Authorized, ModelDep, ServicesDep
from service.api.problems import ProblemError, problem_responses
from service.api.routes.models import threshold_view
from service.api.schemas import Threshold, ThresholdChange, ThresholdHistory, ThresholdUpdate
from service.inference.registry import ServedModel
from service.state.store import ThresholdChange as StoredChange

router = APIRouter(prefix="/v1/models/{model}/threshold", tags=["thresholds"])

PROBLEMS = problem_responses(401, 404, 422)
# A change needs the state folder: read-only (503) or its disk full (507).
CHANGE_PROBLEMS = problem_responses(401, 404, 422, 503, 507)


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
    responses=CHANGE_PROBLEMS,
)
def put_threshold(
    services: ServicesDep, served: ModelDep, update: ThresholdUpdate, actor: Actor = None
) -> Threshold:
    """Make `value` the active threshold (source `manual`) until the next change."""
    value = check_threshold(served, update.value, "value")
    services.store.set_manual(served.name, served.digest, value, actor=actor)
    services.metrics.set_threshold(served.name, value)
    return threshold_view(services, served)


@router.delete(
    "",
    name="reset",
    summary="Go back to the checkpoint's default threshold",
    dependencies=[Authorized],
    responses=CHANGE_PROBLEMS,
)
def reset_threshold(services: ServicesDep, served: ModelDep, actor: Actor = None) -> Threshold:
    """Drop the stored threshold so the checkpoint's default applies (also when it already did)."""
    services.store.reset_to_default(served.name, served.digest, actor=actor)
    services.metrics.set_threshold(served.name, served.default_threshold)
    return threshold_view(services, served)


@router.get(
    "/history",
    name="history",
    summary="The threshold's audit trail",
    responses=problem_responses(404),
)
def threshold_history(services: ServicesDep, served: ModelDep) -> ThresholdHistory:
    """Every change of the model's threshold, newest first, whoever or whatever made it."""
    changes = services.store.history(served.name)
    return ThresholdHistory(changes=[_change_view(served, change) for change in changes])


def _change_view(served: ServedModel, change: StoredChange) -> ThresholdChange:
    # The store records "back to the default" without a value; the served checkpoint knows its
    # own default, while that of a checkpoint no longer served stays unknown (null).
    default = served.default_threshold if change.digest == served.digest else None
    return ThresholdChange(
        at=change.at,
        value=default if change.source == "default" else change.value,
        source=change.source,
        calibration_id=change.calibration_id,
        actor=change.actor,
        previous_value=default if change.previous_source == "default" else change.previous_value,
        previous_source=change.previous_source,
        digest=change.digest,
        reason=change.reason,
    )

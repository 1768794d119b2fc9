"""Reading, overriding and resetting a model's active threshold (`service.usecases.thresholds`),
and its history.

Reads go to the database (a change any process acknowledged is seen at once); a change answers
with what it wrote, so an acknowledged change never turns into an error on the way out.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from service.api.class_schemas import ClassThresholds
from service.api.dependencies import Actor, Authorized, ModelDep, ServicesDep
from service.api.problems import ProblemError, problem_responses
from service.api.routes.class_answers import ClassQuery, check_class
from service.api.routes.models import shown_threshold
from service.api.schemas import Threshold, ThresholdChange, ThresholdHistory, ThresholdUpdate
from service.inference.registry import ServedModel
from service.state.store import ActiveThreshold
from service.state.store import ThresholdChange as StoredChange
from service.usecases import thresholds

router = APIRouter(prefix="/v1/models/{model}/threshold", tags=["thresholds"])

PROBLEMS = problem_responses(401, 404, 422, 503)
# A change needs the state folder: read-only or its database failing (503), its disk full (507).
CHANGE_PROBLEMS = problem_responses(401, 404, 422, 503, 507)
HISTORY_LIMIT = 100  # changes per page by default
HISTORY_MAX_LIMIT = 1000
HISTORY_MAX_OFFSET = 2**31 - 1


@router.get("", name="get", summary="The active threshold", responses=PROBLEMS)
def get_threshold(
    services: ServicesDep, served: ModelDep, class_: ClassQuery = None
) -> Threshold | ClassThresholds:
    """The threshold in force and its source: default, calibration or manual.

    Multi-class models: `?class=name` answers that class's; without it, every class's.
    """
    check_class(served, class_)
    if served.multi_class and class_ is None:
        found = services.class_thresholds(served)
        return ClassThresholds(classes={k: threshold_body(v) for k, v in found.items()})
    active = thresholds.read_threshold(services, served, class_ or "")
    if served.multi_class:
        return threshold_body(active)
    # On the recalibrated scale while a calibration with a recalibration is in force.
    shown = shown_threshold(services, served.name, active.calibration_id, active.value)
    return threshold_body(active, shown)


@router.put(
    "",
    name="set",
    summary="Override the threshold by hand",
    dependencies=[Authorized],
    responses=CHANGE_PROBLEMS,
)
def put_threshold(
    services: ServicesDep,
    served: ModelDep,
    update: ThresholdUpdate,
    actor: Actor = None,
    class_: ClassQuery = None,
) -> Threshold:
    """Make `value` the active threshold (source `manual`) until the next change.

    Multi-class models: `?class=name` is required; each class has its own threshold.
    """
    cls = _changed_class(served, class_, "set")
    active = thresholds.set_threshold(services, served, update.value, actor=actor, cls=cls)
    return threshold_body(active)


@router.delete(
    "",
    name="reset",
    summary="Go back to the checkpoint's default threshold",
    dependencies=[Authorized],
    responses=CHANGE_PROBLEMS,
)
def reset_threshold(
    services: ServicesDep, served: ModelDep, actor: Actor = None, class_: ClassQuery = None
) -> Threshold:
    """Drop the stored threshold so the checkpoint's default applies (also when it already did).

    Multi-class models: `?class=name` is required.
    """
    cls = _changed_class(served, class_, "reset")
    return threshold_body(thresholds.reset_threshold(services, served, actor=actor, cls=cls))


def _changed_class(served: ServedModel, name: str | None, verb: str) -> str:
    """The class a change applies to ("" for a binary model); a multi-class one must name it."""
    check_class(served, name)
    if served.multi_class and name is None:
        raise ProblemError(
            422,
            "Which class?",
            f"model {served.name!r} has a threshold per class; {verb} one at a time with "
            f"class=NAME, one of {', '.join(served.classes)}",
            slug="class-required",
        )
    return name or ""


def threshold_body(active: ActiveThreshold, value: float | None = None) -> Threshold:
    """A threshold in force as the API shows it (`value`: as shown, if not the stored one)."""
    return Threshold(
        value=active.value if value is None else value,
        source=active.source,
        calibration_id=active.calibration_id,
        updated=active.updated,
    )


@router.get(
    "/history",
    name="history",
    summary="The threshold's audit trail",
    responses=problem_responses(404, 422, 503),
)
def threshold_history(
    request: Request,
    response: Response,
    services: ServicesDep,
    served: ModelDep,
    limit: Annotated[
        int,
        Query(ge=1, le=HISTORY_MAX_LIMIT, description="Changes per page (1 to 1000)."),
    ] = HISTORY_LIMIT,
    offset: Annotated[
        int, Query(ge=0, le=HISTORY_MAX_OFFSET, description="Newest changes to skip.")
    ] = 0,
    class_: ClassQuery = None,
) -> ThresholdHistory:
    """The changes of the model's threshold, newest first, whoever or whatever made them.

    One page of `limit`; when more follow, a `Link: <...>; rel="next"` header points at them.
    Multi-class models: `?class=name` is required (each class has its own history).
    """
    cls = _changed_class(served, class_, "read the history of")
    changes = services.store.history(served.name, limit=limit + 1, offset=offset, cls=cls)
    if len(changes) > limit:
        changes = changes[:limit]
        following = request.url.include_query_params(limit=limit, offset=offset + limit)
        response.headers["Link"] = f'<{following}>; rel="next"'
    return ThresholdHistory(changes=[_change_view(served, change, cls) for change in changes])


def _change_view(served: ServedModel, change: StoredChange, cls: str = "") -> ThresholdChange:
    # The store records "back to the default" without a value; the served checkpoint knows its
    # own default, while that of a checkpoint no longer served stays unknown (null).
    own = served.class_defaults[cls] if cls else served.default_threshold
    default = own if change.digest == served.digest else None
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

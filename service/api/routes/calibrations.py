"""Calibrating a model's threshold from an uploaded data set, and the evidence each one leaves."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, File, Form, Path, Query, Request, Response, UploadFile

from model.calibration import (
    ALL_STRATEGIES,
    GUARANTEE_STRATEGIES,
    TARGET_STRATEGIES,
    CalibrationError,
    Criterion,
)
from model.calibration.plots import roc_png
from model.calibration.recalibration import METHODS
from service.api.dependencies import Actor, Authorized, ModelDep, ServicesDep
from service.api.openapi import binary_content
from service.api.problems import ProblemError, problem_responses
from service.api.routes.class_answers import ClassQuery, check_class, class_criteria
from service.api.routes.models import shown_threshold
from service.api.schemas import Calibration, CalibrationList, CalibrationSummary, Threshold
from service.api.spool import SpoolingRoute
from service.api.uploads import read_upload
from service.calibration.jobs import CalibrationParams
from service.inference.registry import ServedModel
from service.usecases import calibrations as usecase
from service.usecases.calibrations import CalibrationView

router = APIRouter(
    prefix="/v1/models/{model}/calibrations", tags=["calibrations"], route_class=SpoolingRoute
)

DatasetFile = Annotated[
    UploadFile,
    File(
        description="A zip holding `images/` and `masks/` (matching file names; masks: 0 is "
        "background, anything else foreground), at its top level or under one folder."
    ),
]
CalibrationId = Annotated[str, Path(description="A calibration id, as the list shows it.")]
LOCATION = {"Location": {"description": "Where to poll the job.", "schema": {"type": "string"}}}


def _summary(view: CalibrationView) -> CalibrationSummary:
    record = view.record
    return CalibrationSummary(
        id=record.id,
        status=record.status,
        progress=record.progress,
        strategy=record.strategy,
        target=record.target,
        threshold=record.threshold,
        auc=record.auc,
        error=record.error,
        activate=record.activate,
        active=view.active,
        params=record.params.published(),
        created=record.created,
        started=record.started,
        finished=record.finished,
    )


def _calibration(view: CalibrationView) -> Calibration:
    return Calibration(
        **_summary(view).model_dump(),
        activation_blocked=view.activation_blocked,
        report=view.record.report,
    )


FORM_FIELDS = ("strategy", "target", "cost_fp", "cost_fn", "activate", "delta", "recalibrate")
_HINTS = {"strategy": ALL_STRATEGIES, "recalibrate": METHODS}


async def _refuse_blank_fields(request: Request) -> None:
    """422 for a form field sent empty: FastAPI would quietly take its default instead."""
    form = await request.form()  # already parsed for the route's parameters: no second read
    for name in FORM_FIELDS:
        values = form.getlist(name)
        if any(isinstance(value, str) and not value.strip() for value in values):
            hint = f"one of {', '.join(_HINTS[name])}" if name in _HINTS else "a value"
            raise ProblemError(
                422,
                "Invalid calibration parameters",
                f"form field {name!r} is empty; give {hint}, or leave the field out for its "
                "default",
                slug="invalid-calibration",
            )


@router.post(
    "",
    status_code=202,
    name="start",
    summary="Start a calibration",
    dependencies=[Authorized],
    responses={202: {"headers": LOCATION}, **problem_responses(401, 404, 413, 422, 429, 503, 507)},
)
async def start_calibration(
    request: Request,
    response: Response,
    services: ServicesDep,
    served: ModelDep,
    dataset: DatasetFile,
    strategy: Annotated[
        str,
        Form(
            description=f"How to choose the threshold: {', '.join(ALL_STRATEGIES)}; default f1 "
            "(pixel F1 = Dice, the segmentation criterion). fnr_control and fdr_control come "
            "with a guarantee (the report's `guarantee`) or fail saying why they cannot."
        ),
    ] = "f1",
    target: Annotated[
        float | None,
        Form(
            description=f"The target rate in (0, 1) of {', '.join(TARGET_STRATEGIES)}; alpha, "
            f"the risk to control, for {', '.join(GUARANTEE_STRATEGIES)}."
        ),
    ] = None,
    delta: Annotated[
        float | None,
        Form(
            description="fdr_control: the guarantee holds with probability at least 1 - delta; "
            "in (0, 1), default 0.1."
        ),
    ] = None,
    recalibrate: Annotated[
        str | None,
        Form(
            description=f"Also fit a recalibration of the probabilities: {', '.join(METHODS)}. "
            "Once active, served probability maps and thresholds are on the recalibrated scale "
            "(masks are unchanged)."
        ),
    ] = None,
    cost_fp: Annotated[
        float, Form(description="`cost` strategy: the cost of a false positive pixel.")
    ] = 1.0,
    cost_fn: Annotated[
        float, Form(description="`cost` strategy: the cost of a false negative pixel.")
    ] = 1.0,
    activate: Annotated[
        bool, Form(description="Make the threshold active when the job succeeds.")
    ] = True,
    force: Annotated[
        bool,
        Form(description="Activate even when the report has a warning of severity block."),
    ] = False,
    class_params: Annotated[
        str | None,
        Form(
            description="Multi-class models: JSON of per-class choices that replace `strategy`, "
            '`target`, `cost_fp`, `cost_fn` for those classes, e.g. `{"debris": {"strategy": '
            '"target_tpr", "target": 0.9}}`; classes not named use the fields above.'
        ),
    ] = None,
) -> Calibration:
    """Check the upload, queue the job and answer 202 at once; poll `Location` for progress."""
    await _refuse_blank_fields(request)
    try:
        criterion = Criterion(strategy.strip().lower(), target, cost_fp, cost_fn, delta)
        method = None if recalibrate is None else recalibrate.strip().lower()
        if method is not None and method not in METHODS:
            raise CalibrationError(
                f"unknown recalibrate {recalibrate!r}; choose one of {', '.join(METHODS)}"
            )
        per_class = class_criteria(served, class_params, criterion)
        _binary_only(served, method, [criterion, *(per_class or {}).values()])
    except CalibrationError as error:
        raise ProblemError(
            422, "Invalid calibration parameters", str(error), slug="invalid-calibration"
        ) from None
    data = await read_upload(
        dataset, services.settings.max_dataset_bytes, "dataset", "UNET_MAX_DATASET_BYTES"
    )
    params = CalibrationParams(
        criterion, activate, force, class_criteria=per_class, recalibrate=method
    )
    view = await usecase.start_calibration(services, served, data, dataset.filename, params)
    root = request.scope.get("root_path", "")
    response.headers["Location"] = (
        f"{root}/v1/models/{quote(served.name, safe='')}/calibrations/{view.record.id}"
    )
    return _calibration(view)


@router.get(
    "", name="list", summary="List a model's calibrations", responses=problem_responses(404, 503)
)
def list_calibrations(services: ServicesDep, served: ModelDep) -> CalibrationList:
    """Every calibration of the model, newest first, without reports."""
    views = usecase.calibrations(services, served)
    return CalibrationList(calibrations=[_summary(view) for view in views])


@router.get(
    "/{calibration_id}",
    name="get",
    summary="A calibration's status and report",
    responses=problem_responses(404, 503),
)
def get_calibration(
    services: ServicesDep, served: ModelDep, calibration_id: CalibrationId
) -> Calibration:
    """Status and progress; the report once it has succeeded, the reason if it failed."""
    return _calibration(usecase.calibration(services, served, calibration_id))


@router.get(
    "/{calibration_id}/roc.png",
    name="roc",
    summary="The ROC plot of a calibration",
    response_class=Response,
    responses={
        200: {**binary_content("image/png"), "description": "PNG"},
        **problem_responses(404, 409, 503),
    },
)
def get_roc_png(
    services: ServicesDep,
    served: ModelDep,
    calibration_id: CalibrationId,
    class_: ClassQuery = None,
) -> Response:
    """The ROC curve with its AUC and the chosen and the 0.5 operating points marked.

    Multi-class models: one class's curve, `?class=name` (default: the first class).
    """
    check_class(served, class_)
    report = usecase.succeeded_report(
        services, served, calibration_id, "the ROC plot", class_ or ""
    )
    # A succeeded calibration never changes, so its plot may be cached for good.
    return Response(
        roc_png(report),
        media_type="image/png",
        headers={"Cache-Control": "public, max-age=31536000, immutable"},
    )


@router.post(
    "/{calibration_id}/activate",
    name="activate",
    summary="Make a calibration's threshold the active one",
    dependencies=[Authorized],
    responses=problem_responses(401, 404, 409, 503, 507),
)
def activate_calibration(
    services: ServicesDep,
    served: ModelDep,
    calibration_id: CalibrationId,
    actor: Actor = None,
    force: Annotated[
        bool, Query(description="Activate even when the report has a warning of severity block.")
    ] = False,
) -> Threshold:
    """The calibration's threshold is in force from now on (source `calibration`)."""
    active = usecase.activate_calibration(services, served, calibration_id, actor, force)
    # What was written, not read back: an acknowledged change never becomes an error here.
    return Threshold(
        value=shown_threshold(services, served.name, active.calibration_id, active.value),
        source=active.source,
        calibration_id=active.calibration_id,
        updated=active.updated,
    )


def _binary_only(served: ServedModel, method: str | None, criteria: list[Criterion]) -> None:
    """Guaranteed strategies and recalibration are for binary models (the README says why)."""
    if not served.multi_class:
        return
    guaranteed = sorted({c.strategy for c in criteria if c.strategy in GUARANTEE_STRATEGIES})
    if guaranteed or method is not None:
        asked = ", ".join([*guaranteed, *([f"recalibrate={method}"] if method else [])])
        raise CalibrationError(
            f"{asked} apply to binary models; {served.name!r} is {served.mode}: calibrate its "
            "classes with another strategy and no recalibrate"
        )

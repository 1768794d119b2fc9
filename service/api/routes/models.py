"""Reading the served models."""

from __future__ import annotations

import math

from fastapi import APIRouter

from model.calibration import MultiClassReport
from service.api.dependencies import ModelDep, ServicesDep
from service.api.problems import problem_responses
from service.api.schemas import (
    Architecture,
    CalibrationWarning,
    DriftStatus,
    ModelInfo,
    ModelList,
    Threshold,
)
from service.container import Services
from service.inference.registry import ServedModel
from service.usecases.recalibrated import (
    GUARANTEE_WITHDRAWN,
    WITHDRAWN_WARNING,
    guarantee_state,
)

router = APIRouter(prefix="/v1/models", tags=["models"])


def threshold_view(services: Services, served: ServedModel) -> Threshold:
    """The active threshold of `served` as the API shows it."""
    active = services.active_threshold(served)
    return Threshold(
        value=shown_threshold(services, served.name, active.calibration_id, active.value),
        source=active.source,
        calibration_id=active.calibration_id,
        updated=active.updated,
    )


def class_threshold_views(services: Services, served: ServedModel) -> dict[str, Threshold]:
    """A multi-class model's active threshold per class, as the API shows them."""
    return {
        name: Threshold(
            value=active.value,
            source=active.source,
            calibration_id=active.calibration_id,
            updated=active.updated,
        )
        for name, active in services.class_thresholds(served).items()
    }


def model_info(services: Services, served: ServedModel) -> ModelInfo:
    """Everything a client needs to know about one served model."""
    if served.multi_class:
        return _multi_class_info(services, served)
    low, high = served.output_range
    active = services.active_threshold(served)
    meta = served.meta
    drift = services.drift.status(served.name, active.calibration_id)
    warnings = _active_warnings(services, served, active.calibration_id)
    guarantee = guarantee_state(services.extras.of(served.name, active.calibration_id), drift)
    if guarantee == GUARANTEE_WITHDRAWN:
        warnings.append(
            CalibrationWarning(
                code="guarantee_withdrawn", severity="warn", message=WITHDRAWN_WARNING
            )
        )
    return ModelInfo(
        name=served.name,
        architecture=Architecture(**meta.architecture.to_dict()) if meta else None,  # type: ignore[arg-type]
        card=served.card.model_dump(mode="json"),
        outputs_probabilities=served.is_probability,
        output_range=(low if math.isfinite(low) else None, high if math.isfinite(high) else None),
        threshold=threshold_view(services, served),
        default_threshold=served.default_threshold,
        digest=served.digest,
        warnings=warnings,
        drift_status=drift,
        guarantee=guarantee,
        backend=services.engine.backend(served.name),
        mode="binary",
        precision=served.precision,
    )


def _multi_class_info(services: Services, served: ServedModel) -> ModelInfo:
    """A multi-class model: its classes and one threshold per class (no single threshold)."""
    low, high = served.output_range
    meta = served.meta
    thresholds = class_threshold_views(services, served)
    calibrations = {t.calibration_id for t in thresholds.values()} - {None}
    warnings = [
        warning
        for calibration_id in sorted(c for c in calibrations if c is not None)
        for warning in _active_warnings(services, served, calibration_id)
    ]
    return ModelInfo(
        name=served.name,
        architecture=Architecture(**meta.architecture.to_dict()) if meta else None,  # type: ignore[arg-type]
        card=served.card.model_dump(mode="json"),
        outputs_probabilities=served.is_probability,
        output_range=(low if math.isfinite(low) else None, high if math.isfinite(high) else None),
        # The first class's, so a client that reads one threshold reads a real one; every
        # class's is in `class_thresholds`.
        threshold=next(iter(thresholds.values())),
        default_threshold=served.class_defaults[served.classes[0]],
        digest=served.digest,
        warnings=warnings,
        drift_status=_worst_drift(services, served, thresholds),
        backend=services.engine.backend(served.name),
        mode=served.mode,  # type: ignore[arg-type]
        classes=list(served.classes),
        class_thresholds=thresholds,
        precision=served.precision,
    )


def _worst_drift(
    services: Services, served: ServedModel, thresholds: dict[str, Threshold]
) -> DriftStatus:
    """A multi-class model's drift status: its worst class's (alert over warn over ok)."""
    found = {
        services.drift.status(served.name, t.calibration_id, name) for name, t in thresholds.items()
    }
    for status in ("alert", "warn", "ok"):
        if status in found:
            return status
    return "no_reference"


def shown_threshold(
    services: Services, model: str, calibration_id: str | None, value: float
) -> float:
    """A threshold as clients see it: on the recalibrated scale while a recalibration is active."""
    rescale = services.extras.of(model, calibration_id).rescale
    return value if rescale is None else rescale.threshold(value)


def _active_warnings(
    services: Services, served: ServedModel, calibration_id: str | None
) -> list[CalibrationWarning]:
    """The warnings of the calibration whose threshold is in force (none without one)."""
    record = (
        None
        if calibration_id is None
        else services.store.get_calibration(served.name, calibration_id)
    )
    if record is None or record.report is None:
        return []
    if isinstance(record.report, MultiClassReport):  # each class's, its name in the message
        return [
            CalibrationWarning(**{**w.model_dump(), "message": f"{name}: {w.message}"})
            for name, report in record.report.classes.items()
            for w in report.warnings
        ]
    return [CalibrationWarning(**w.model_dump()) for w in record.report.warnings]


@router.get("", name="list", summary="List the served models")
def list_models(services: ServicesDep) -> ModelList:
    """Every model with its card and active threshold; those that failed to load, with why."""
    registry = services.registry
    models = [model_info(services, served) for served in registry]
    models += [
        ModelInfo(name=name, available=False, error=error, backend=None, precision=None)
        for name, error in registry.failures().items()
    ]
    return ModelList(models=sorted(models, key=lambda info: info.name))


@router.get(
    "/{model}",
    name="get",
    summary="Describe one model",
    responses=problem_responses(404, 503),
)
def get_model(services: ServicesDep, served: ModelDep) -> ModelInfo:
    """One model's architecture, head range and active threshold."""
    return model_info(services, served)

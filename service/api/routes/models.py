"""Reading the served models."""

from __future__ import annotations

import math

from fastapi import APIRouter

from service.api.dependencies import ModelDep, ServicesDep
from service.api.problems import problem_responses
from service.api.schemas import Architecture, CalibrationWarning, ModelInfo, ModelList, Threshold
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


def model_info(services: Services, served: ServedModel) -> ModelInfo:
    """Everything a client needs to know about one served model."""
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
    )


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
    return [CalibrationWarning(**w.model_dump()) for w in record.report.warnings]


@router.get("", name="list", summary="List the served models")
def list_models(services: ServicesDep) -> ModelList:
    """Every model with its card and active threshold; those that failed to load, with why."""
    registry = services.registry
    models = [model_info(services, served) for served in registry]
    models += [
        ModelInfo(name=name, available=False, error=error, backend=None)
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

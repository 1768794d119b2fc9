"""Request and response shapes of HTTP API v1, with examples for the OpenAPI docs."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from model.calibration import CalibrationReport, MultiClassReport

ThresholdSource = Literal["default", "calibration", "manual"]
CalibrationStatus = Literal["queued", "running", "succeeded", "failed"]
DriftStatus = Literal["ok", "warn", "alert", "no_reference"]


class CalibrationWarning(BaseModel):
    """A calibration report's finding about its own trustworthiness."""

    code: str = Field(
        description="auc_below_chance, auc_drop, few_positives, wide_interval, images_disagree, "
        "tied_scores, not_a_probability or worse_than_fixed; in ModelInfo also "
        "guarantee_withdrawn."
    )
    severity: Literal["info", "warn", "block"] = Field(
        description="block: the calibration is not activated unless force=true."
    )
    message: str = Field(description="What it means and what to do.")


class ForegroundFractions(BaseModel):
    """Mean share of pixels at or above the calibration's threshold."""

    served: float | None = Field(description="Over the window's served images (null: none).")
    calibration: float | None = Field(description="On the calibration set.")


class Drift(BaseModel):
    """How far a model's served scores have moved from its active calibration's."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "ok",
                    "n_images": 200,
                    "window": 200,
                    "score_distance": 0.031,
                    "foreground_fraction": {"served": 0.22, "calibration": 0.24},
                    "calibration_id": "0193a1c2e4f57a1b2c3d4e5f6a7b8c9d",
                    "metric": "psi",
                    "cutoffs": {"warn": 0.1, "alert": 0.25},
                    "min_images": 20,
                }
            ]
        }
    )

    status: DriftStatus = Field(
        description="ok, warn (PSI >= cutoffs.warn), alert (PSI >= cutoffs.alert) or "
        "no_reference (no active calibration to compare with); ok until min_images are in."
    )
    n_images: int = Field(description="Served images in the window.")
    window: int = Field(description="The window's length in images (UNET_DRIFT_WINDOW).")
    score_distance: float | None = Field(
        description="PSI of the window's scores against the calibration's (null: no images)."
    )
    foreground_fraction: ForegroundFractions
    calibration_id: str | None = Field(description="The calibration compared with.")
    metric: Literal["psi"] = "psi"
    cutoffs: dict[str, float] = Field(description="The PSI at which status becomes warn, alert.")
    min_images: int = Field(description="Images needed before the status can leave ok.")


class Liveness(BaseModel):
    """The process serves."""

    status: Literal["ok"]


class Readiness(BaseModel):
    """Whether every model is loaded and warmed up."""

    status: Literal["ready", "starting"] = Field(description="ready, or starting with a 503.")
    models: list[str] | None = Field(default=None, description="The served models, once ready.")
    state: str | None = Field(
        default=None,
        description="Once ready: `writable`, `read-only: <why>` when the state folder "
        "cannot be written, or `failing since <time>: <why>` while the threshold database "
        "fails (inference is served, changes are refused with 503).",
    )
    unavailable: dict[str, str] | None = Field(
        default=None,
        description="Models that failed to load, probe or warm up and will not become ready, "
        "with the reason (files named relative to the model folder).",
    )


class Architecture(BaseModel):
    """How the network is built."""

    head: str = Field(description="Output head: sigmoid, relu, identity, hard_sigmoid, softmax.")
    activation: str = Field(description="Hidden-layer activation.")
    depth: int = Field(description="Number of down-sampling levels.")
    base_channels: int = Field(description="Channels of the first level; doubled per level.")
    in_channels: int
    out_channels: int
    norm: str


class Threshold(BaseModel):
    """The threshold in force for a model and where it came from."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "value": 0.41,
                    "source": "calibration",
                    "calibration_id": "0193a1c2e4f5",
                    "updated": "2026-11-22T09:30:00Z",
                }
            ]
        }
    )

    value: float = Field(description="Pixels with score >= value are foreground.")
    source: ThresholdSource = Field(description="default, calibration or manual.")
    calibration_id: str | None = Field(
        default=None, description="The calibration it came from, if any."
    )
    updated: datetime | None = Field(
        default=None, description="When it took effect (null for default)."
    )


class ThresholdUpdate(BaseModel):
    """A manual override of a model's threshold."""

    # Strict: `true` or `" 0.5"` is a client's mistake, not a threshold of 1.0 or 0.5.
    model_config = ConfigDict(
        strict=True, extra="forbid", json_schema_extra={"examples": [{"value": 0.35}]}
    )

    value: float = Field(description="New threshold, inside the head's output range.")


class ThresholdChange(BaseModel):
    """One change of a model's active threshold, as the audit trail keeps it."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "at": "2026-11-22T09:30:00.004Z",
                    "value": 0.3871,
                    "source": "calibration",
                    "calibration_id": "0193a1c2e4f57a1b2c3d4e5f6a7b8c9d",
                    "actor": None,
                    "previous_value": 0.5,
                    "previous_source": "default",
                    "digest": "5f0c…",
                    "reason": None,
                }
            ]
        }
    )

    at: datetime = Field(description="When the change took effect.")
    value: float | None = Field(
        description="The threshold from then on; null only for the default of a checkpoint that "
        "is no longer served."
    )
    source: ThresholdSource = Field(description="default, calibration or manual.")
    calibration_id: str | None = Field(
        default=None, description="The calibration it came from, if any."
    )
    actor: str | None = Field(
        default=None, description="Who made it, as their X-Actor header said."
    )
    previous_value: float | None = Field(
        default=None, description="The threshold before the change."
    )
    previous_source: ThresholdSource = Field(description="Where the previous threshold came from.")
    digest: str = Field(description="SHA-256 of the checkpoint the change applies to.")
    reason: str | None = Field(
        default=None, description="Why the service changed it by itself, e.g. a changed checkpoint."
    )


class ThresholdHistory(BaseModel):
    """A model's threshold changes, newest first."""

    changes: list[ThresholdChange]


class ModelInfo(BaseModel):
    """A served model."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "unet-sigmoid",
                    "architecture": {
                        "head": "sigmoid",
                        "activation": "relu",
                        "depth": 3,
                        "base_channels": 16,
                        "in_channels": 1,
                        "out_channels": 1,
                        "norm": "batch",
                    },
                    "outputs_probabilities": True,
                    "output_range": [0.0, 1.0],
                    "threshold": {"value": 0.41, "source": "default", "calibration_id": None},
                    "default_threshold": 0.41,
                    "digest": "5f0c…",
                    "warnings": [],
                    "drift_status": "no_reference",
                    "backend": "onnxruntime",
                    "precision": "fp32",
                }
            ]
        }
    )

    name: str = Field(description="The card's (checkpoint's) file stem; use it in URLs.")
    available: bool = Field(
        default=True, description="False when the model failed to load, probe or warm up."
    )
    error: str | None = Field(
        default=None,
        description="Why it is unavailable, and what to fix (files relative to the model folder).",
    )
    # The fields below are null for a model that failed to load; `architecture` also for a
    # network that is not this package's own U-Net (its card says what it is).
    architecture: Architecture | None = None
    card: dict[str, Any] | None = Field(
        default=None,
        description="The model card: source, input (normalisation), output, pad_multiple.",
    )
    outputs_probabilities: bool | None = Field(
        default=None, description="Whether the head's output lies in [0, 1]."
    )
    output_range: tuple[float | None, float | None] | None = Field(
        default=None, description="The head's output interval; null for an unbounded side."
    )
    threshold: Threshold | None = Field(default=None, description="The active threshold.")
    default_threshold: float | None = Field(
        default=None, description="The card's own threshold (0.5 if none)."
    )
    digest: str | None = Field(
        default=None, description="SHA-256 of the card and its network; thresholds are tied to it."
    )
    warnings: list[CalibrationWarning] = Field(
        default_factory=list, description="The active calibration's warnings (none otherwise)."
    )
    drift_status: DriftStatus | None = Field(
        default=None, description="GET /v1/models/{model}/drift has the figures."
    )
    guarantee: Literal["present", "withdrawn (drift alert)"] | None = Field(
        default=None,
        description="Whether the active calibration's guarantee (fnr_control, fdr_control) is "
        "claimed: withdrawn while the drift status is alert; null when none was certified. "
        "Inference answers say the same in X-Threshold-Guarantee.",
    )
    backend: Literal["torch", "onnxruntime"] | None = Field(
        None,
        description="What runs the network's passes (UNET_BACKEND); null while the engine "
        "starts and has not chosen yet, and for a model that failed to load.",
    )
    mode: Literal["binary", "multilabel", "multiclass"] | None = Field(
        default=None,
        description="binary (one map), multilabel (K independent maps) or multiclass (softmax "
        "over background and K classes); null for a model that failed to load.",
    )
    classes: list[str] = Field(
        default_factory=list, description="The K foreground classes in order; [] for binary."
    )
    class_thresholds: dict[str, Threshold] | None = Field(
        default=None,
        description="Multi-class: the active threshold of each class (`threshold` and "
        "`default_threshold` are then the first class's); null for binary.",
    )
    precision: Literal["fp32", "int8"] | None = Field(
        None,
        description="The served network's precision (UNET_PRECISION): `int8` is a quantised "
        "model with its own digest and thresholds; null for a model that failed to load.",
    )


class ModelList(BaseModel):
    """All served models."""

    models: list[ModelInfo]


class MaskJson(BaseModel):
    """A mask as COCO uncompressed run-length encoding."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "width": 4,
                    "height": 3,
                    "threshold": 0.41,
                    "threshold_source": "calibration",
                    "foreground_fraction": 0.25,
                    "rle": {"size": [3, 4], "counts": [4, 3, 5]},
                }
            ]
        }
    )

    width: int
    height: int
    threshold: float = Field(description="The threshold used: foreground where score >= it.")
    threshold_source: Literal["default", "calibration", "manual", "request"]
    foreground_fraction: float
    rle: dict[str, Any] = Field(
        description="COCO uncompressed RLE: size [height, width], column-major counts that "
        "start with a background run."
    )


class CalibrationSummary(BaseModel):
    """One calibration job as the list shows it: what was asked and what came out."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "0193a1c2e4f57a1b2c3d4e5f6a7b8c9d",
                    "status": "succeeded",
                    "progress": 1.0,
                    "strategy": "target_tpr",
                    "target": 0.95,
                    "threshold": 0.3871,
                    "auc": 0.9874,
                    "error": None,
                    "activate": True,
                    "active": True,
                    "params": {
                        "cost_fp": 1.0,
                        "cost_fn": 1.0,
                        "dataset": "calibration.zip",
                        "n_images": 48,
                        "force": False,
                    },
                    "created": "2026-11-22T09:29:41.120Z",
                    "started": "2026-11-22T09:29:41.131Z",
                    "finished": "2026-11-22T09:30:00.004Z",
                }
            ]
        }
    )

    id: str = Field(description="The calibration's id; ids sort by creation time.")
    status: CalibrationStatus = Field(description="queued, running, succeeded or failed.")
    progress: float = Field(description="Share of the work done, 0 to 1.")
    strategy: str = Field(description="How the threshold is chosen from the ROC curve.")
    target: float | None = Field(default=None, description="The target of a target_* strategy.")
    threshold: float | None = Field(
        default=None, description="The chosen threshold, once succeeded."
    )
    auc: float | None = Field(default=None, description="Pixel ROC AUC, once succeeded.")
    error: str | None = Field(default=None, description="Why it failed, for a person to act on.")
    activate: bool = Field(description="Whether it was to become the active threshold.")
    active: bool = Field(description="Whether its threshold is the one in force now.")
    params: dict[str, Any] = Field(
        description="Costs (cost_fp, cost_fn), the uploaded file's name, the image count and force."
    )
    created: datetime
    started: datetime | None = None
    finished: datetime | None = None


class Calibration(CalibrationSummary):
    """One calibration job with its report once it has succeeded."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "0193a1c2e4f57a1b2c3d4e5f6a7b8c9d",
                    "status": "running",
                    "progress": 0.42,
                    "strategy": "f1",
                    "target": None,
                    "threshold": None,
                    "auc": None,
                    "error": None,
                    "activate": True,
                    "active": False,
                    "params": {
                        "cost_fp": 1.0,
                        "cost_fn": 1.0,
                        "dataset": "calibration.zip",
                        "n_images": 48,
                        "force": False,
                    },
                    "created": "2026-11-22T09:29:41.120Z",
                    "started": "2026-11-22T09:29:41.131Z",
                    "finished": None,
                    "report": None,
                }
            ]
        }
    )

    activation_blocked: str | None = Field(
        None,
        description="Why a succeeded calibration asked to activate was not: its report has "
        "blocking warnings and force was not given.",
    )
    report: CalibrationReport | MultiClassReport | None = Field(
        default=None,
        title="Report",
        description="The calibration report (threshold, auc, roc, operating_points, confusion, "
        "threshold_ci, ...; see the README's calibration report), once succeeded; for a "
        "multi-class model `{mode, classes: {name: <that report>}, n_images, n_pixels, summary}`.",
    )


class CalibrationList(BaseModel):
    """A model's calibrations, newest first."""

    calibrations: list[CalibrationSummary]

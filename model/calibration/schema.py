"""The calibration report as typed, frozen values (README, "The calibration report").

`CalibrationReport.to_dict()` is the JSON schema the API, the CLI and the store have always used,
key for key; `from_dict()` reads it back (a stored report, a CLI's JSON) and rejects anything
else. Pydantic does the nesting, the checking and the JSON, so readers use attributes instead of
string keys and a misspelt key fails at the type checker instead of at run time.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, model_serializer

Severity = Literal["info", "warn", "block"]


class _Frozen(BaseModel):
    # Unknown keys are errors: a report holds exactly its schema's keys. NaN and infinities are
    # too, since JSON has neither: the builder writes an undefined number as None.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class Roc(_Frozen):
    """At most 512 points of the ROC curve, highest threshold first."""

    fpr: tuple[float, ...]
    tpr: tuple[float, ...]
    thresholds: tuple[float, ...]


class OperatingPoint(_Frozen):
    """One threshold and its rates; precision is None where nothing is selected."""

    threshold: float
    tpr: float
    fpr: float
    precision: float | None
    f1: float
    iou: float
    youden_j: float


class Confusion(_Frozen):
    """Pixel counts at the chosen threshold."""

    tp: int
    fp: int
    tn: int
    fn: int


class ReliabilityRow(_Frozen):
    """One equal-width probability bin of the reliability table (None: no pixel in it)."""

    lo: float
    hi: float
    mean_predicted: float | None
    observed_frequency: float | None
    count: int


class PerImageSpread(_Frozen):
    """Quantiles of each image's own optimal threshold under the chosen strategy."""

    median: float
    q25: float
    q75: float
    min: float
    max: float
    n_images: int
    sampled: bool


class ScoreRange(_Frozen):
    """The lowest and highest score seen, and the share of pixels tied at the highest."""

    min: float
    max: float
    tied_at_max_fraction: float


class ProbabilityQuantisation(_Frozen):
    """The bin layout of a probability head and where the chosen threshold falls in it."""

    scheme: str
    n_bins: int
    mantissa_bits: int
    max_step_probability: float
    max_step_logit: float
    resolved_logit_range: tuple[float, float]
    threshold_bin: tuple[float | None, float | None]
    threshold_logit: float | None
    logits_binned: bool


class UnboundedQuantisation(_Frozen):
    """The bin layout of an unbounded head and where the chosen threshold falls in it."""

    scheme: str
    n_bins: int
    mantissa_bits: int
    max_relative_step: float
    resolved_range: tuple[float, float]
    threshold_bin: tuple[float | None, float | None]
    threshold_logit: float | None
    logits_binned: bool


class HealthWarning(_Frozen):
    """One finding about the calibration's trustworthiness; `block` keeps it from activation."""

    code: str
    severity: Severity
    message: str


class ScoreProfile(_Frozen):
    """The calibration set's score distribution in a few quantile bins, the reference for drift.

    ``edges`` are ascending cut points (bin i holds edges[i-1] <= score < edges[i]), each a fine
    bin edge of the calibration's own binning; ``fractions`` the share of pixels in each of the
    ``len(edges) + 1`` bins; ``foreground_fraction`` the share of pixels at or above
    ``threshold``.
    """

    edges: tuple[float, ...]
    fractions: tuple[float, ...]
    threshold: float
    foreground_fraction: float


class PerImageRisk(_Frozen):
    """The spread a guarantee does not cover: the per-image loss at the chosen threshold."""

    median: float
    p90: float
    above_2alpha: float  # share of images whose loss exceeds 2 alpha
    n_excluded: int  # images the empty-image policy set apart (see `empty_policy`)


class Guarantee(_Frozen):
    """What a guaranteed strategy (fnr_control, fdr_control) certifies, and on what."""

    risk: Literal["fnr", "fdr"]
    alpha: float
    delta: float | None  # fdr_control: the guarantee holds with probability 1 - delta
    n_images: int  # images the risk is computed on
    bound: float  # B, the largest value the per-image loss can take
    empty_policy: str
    calibration_risk: float  # mean per-image loss on the calibration set at the threshold
    per_image: PerImageRisk
    statement: str


class Interval(_Frozen):
    """A value and its 95% bootstrap interval over held-out images."""

    value: float
    low: float
    high: float


class RecalibrationQuality(_Frozen):
    """ECE and Brier on held-out pixels, before and after the fitted map."""

    ece_before: Interval
    ece_after: Interval
    brier_before: Interval
    brier_after: Interval


class Recalibration(_Frozen):
    """A monotone map from the head's scores to calibrated probabilities, fitted on images.

    `knots_x` (the feature: logit for probability heads, the raw score otherwise) and `knots_y`
    (the calibrated logit) define a strictly increasing piecewise-linear map, extended with the
    end slopes; `temperature` and `platt` are the one-segment case.
    """

    method: Literal["temperature", "platt", "isotonic"]
    feature: Literal["logit", "score"]
    knots_x: tuple[float, ...]
    knots_y: tuple[float, ...]
    slope_low: float
    slope_high: float
    ece_before: float
    ece_after: float
    brier_before: float
    brier_after: float
    auc_before: float
    auc_after: float
    n_fit_images: int
    n_heldout_images: int
    n_heldout_pixels: int
    heldout: RecalibrationQuality
    foreground: RecalibrationQuality


class CalibrationReport(_Frozen):
    """A calibration's threshold and the evidence for it."""

    threshold: float
    strategy: str
    target: float | None
    auc: float
    average_precision: float
    n_images: int
    n_pixels: int
    positive_fraction: float
    is_probability: bool
    roc: Roc
    operating_points: dict[str, OperatingPoint]
    confusion: Confusion
    threshold_ci: tuple[float, float] | None
    brier: float | None
    ece: float | None
    reliability: tuple[ReliabilityRow, ...] | None
    tied_at_min_fraction: float
    per_image_thresholds: PerImageSpread | None
    score_range: ScoreRange
    quantisation: ProbabilityQuantisation | UnboundedQuantisation
    # Defaults: reports stored before threshold health carry neither.
    warnings: tuple[HealthWarning, ...] = ()
    score_profile: ScoreProfile | None = None
    # Only for the guaranteed strategies, and for calibrations that fit a recalibration.
    guarantee: Guarantee | None = None
    recalibration: Recalibration | None = None

    @property
    def blocking(self) -> tuple[HealthWarning, ...]:
        """The warnings that keep this calibration from becoming active without force."""
        return tuple(w for w in self.warnings if w.severity == "block")

    @property
    def chosen(self) -> OperatingPoint:
        """The operating point of the chosen threshold."""
        return self.operating_points[self.strategy]

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON values (lists, not tuples), in the documented schema."""
        return self.model_dump(mode="json")

    def to_json(self) -> str:
        """The report as one line of JSON."""
        return self.model_dump_json()

    @model_serializer(mode="wrap")
    def _without_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A report without a guarantee or a recalibration keeps exactly the keys it always had,
        # wherever it is serialised (the CLI, the store, the API's response models).
        data: dict[str, Any] = handler(self)
        for key in ("guarantee", "recalibration"):
            if data.get(key, 0) is None:
                del data[key]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CalibrationReport:
        """A report read back from its `to_dict()` form; ValidationError if it is not one."""
        return cls.model_validate(data)


class ClassDice(_Frozen):
    """Per-class and macro (mean over classes) Dice of one decision rule on the calibration set.

    `exact` is False where the value was read off the joint grid (`model.calibration.classes`).
    """

    per_class: dict[str, float]
    macro: float
    exact: bool


class ClassSummary(_Frozen):
    """The classes side by side: chosen thresholds and Dice against argmax and the 0.5 cut.

    ``dice`` has ``calibrated`` (the chosen thresholds under the decision rule), ``fixed_0.5``
    (every threshold at 0.5) and, for multiclass, ``argmax`` (background included).
    ``argmax_disagreement`` is the share of pixels where the calibrated rule and plain argmax
    differ (multiclass; read off a grid of ``grid_levels`` levels per class).
    """

    thresholds: dict[str, float]
    dice: dict[str, ClassDice]
    argmax_disagreement: float | None
    grid_levels: int | None


class MultiClassReport(_Frozen):
    """A multi-class calibration: one full binary report per class (one-vs-rest), and a summary."""

    mode: Literal["multilabel", "multiclass"]
    classes: dict[str, CalibrationReport]
    n_images: int
    n_pixels: int
    summary: ClassSummary

    @property
    def thresholds(self) -> dict[str, float]:
        """The chosen threshold of each class, in class order."""
        return {name: report.threshold for name, report in self.classes.items()}

    @property
    def blocking(self) -> tuple[tuple[str, HealthWarning], ...]:
        """(class, warning) for every warning that keeps this calibration from activation."""
        return tuple(
            (name, warning) for name, report in self.classes.items() for warning in report.blocking
        )

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON values: `classes: {name: <binary report>}` and `summary`."""
        return self.model_dump(mode="json")

    def to_json(self) -> str:
        """The report as one line of JSON."""
        return self.model_dump_json()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MultiClassReport:
        """A report read back from its `to_dict()` form; ValidationError if it is not one."""
        return cls.model_validate(data)

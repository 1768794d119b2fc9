"""Threshold health: what in a calibration report says its threshold should not be trusted.

`assess` reads a finished report (no pixels, no I/O) and returns `HealthWarning`s, each with a
message saying what it means and what to do. Severities: ``info`` (worth knowing), ``warn`` (look
before relying on it) and ``block`` (the threshold is misleading: a service must not activate it
unless told to with force). The cut-offs are the named constants below.
"""

from __future__ import annotations

import math

from model.calibration.schema import CalibrationReport, HealthWarning, OperatingPoint, Severity
from model.calibration.strategies import TARGET_STRATEGIES, Criterion

# A ROC AUC below chance means the scores rank foreground below background: inverted output
# (a head or label swapped) or input the model cannot read (normalisation, contrast, modality).
AUC_CHANCE = 0.5
# `auc_drop`: the error rate 1 - AUC more than doubled against the reference, and by at least
# this much, so that a model with AUC 0.99 warns at 0.98 but not at 0.989.
AUC_DROP_MIN = 0.02
# Below this many foreground pixels the curve's upper part is a handful of steps: no threshold
# read off it means anything, so it blocks.
MIN_POSITIVE_PIXELS_BLOCK = 100
# Below these the threshold is noisy; it still stands, with a warning.
MIN_POSITIVE_PIXELS = 1000
MIN_IMAGES = 5
# `wide_interval`: another operating point inside the 95% interval whose Dice differs by more
# than this: the calibration set cannot tell apart thresholds that segment differently.
MATERIAL_DICE = 0.01
# `images_disagree`: the middle half of per-image optimal thresholds spans more than this many
# logits (a factor of e**2, about 7, in odds) for probabilities, or more than the median itself
# for unbounded scores; with fewer images than MIN_IMAGES a spread means nothing.
DISAGREE_LOGITS = 2.0
DISAGREE_RELATIVE = 1.0
# `tied_scores`: most pixels on one exact score (a ReLU head's 0, a saturated sigmoid's 1.0).
TIED_FRACTION = 0.5
# Strategies with no target or cost: the choice is "the best overall", and for segmentation
# that is judged by Dice.
_DICE_JUDGED = ("youden", "closest", "f1")


def assess(
    report: CalibrationReport, criterion: Criterion, reference_auc: float | None = None
) -> tuple[HealthWarning, ...]:
    """The warnings a report deserves; `reference_auc` is the model's known AUC, if any."""
    found: list[HealthWarning | None] = [
        _auc_below_chance(report),
        _auc_drop(report, reference_auc),
        _few_positives(report),
        _wide_interval(report),
        _images_disagree(report),
        _tied_scores(report),
        _not_a_probability(report),
        _worse_than_fixed(report, criterion),
    ]
    return tuple(w for w in found if w is not None)


def _warning(code: str, severity: Severity, message: str) -> HealthWarning:
    return HealthWarning(code=code, severity=severity, message=message)


def _auc_below_chance(report: CalibrationReport) -> HealthWarning | None:
    if report.auc >= AUC_CHANCE:
        return None
    return _warning(
        "auc_below_chance",
        "block",
        f"pixel AUC is {report.auc:.3f}, worse than chance (0.5): the model scores background "
        "above foreground on this set. The images are probably not what the model was trained "
        "on (inverted contrast, another normalisation or modality) or the masks are inverted; "
        "check the images and masks instead of using this threshold",
    )


def _auc_drop(report: CalibrationReport, reference: float | None) -> HealthWarning | None:
    if reference is None or not math.isfinite(reference) or report.auc < AUC_CHANCE:
        return None  # below chance already says more
    drop = reference - report.auc
    if drop <= max(AUC_DROP_MIN, 1.0 - reference):
        return None
    return _warning(
        "auc_drop",
        "warn",
        f"pixel AUC is {report.auc:.3f}, clearly below the model's reference {reference:.3f}: "
        "the model separates foreground from background worse on these images than on the data "
        "it was validated on. Check that the calibration images come from the data you serve "
        "and are prepared the same way; retrain if they do",
    )


def _few_positives(report: CalibrationReport) -> HealthWarning | None:
    n_pos = report.confusion.tp + report.confusion.fn
    if n_pos >= MIN_POSITIVE_PIXELS and report.n_images >= MIN_IMAGES:
        return None
    severity: Severity = "block" if n_pos < MIN_POSITIVE_PIXELS_BLOCK else "warn"
    return _warning(
        "few_positives",
        severity,
        f"the set holds {n_pos} foreground pixels in {report.n_images} images (at least "
        f"{MIN_POSITIVE_PIXELS} pixels in {MIN_IMAGES} images make a threshold worth trusting): "
        "the threshold rests on too little evidence. Add images with labelled foreground",
    )


def _wide_interval(report: CalibrationReport) -> HealthWarning | None:
    if report.threshold_ci is None:
        return None
    low, high = report.threshold_ci
    chosen = report.chosen
    inside = [
        (name, point)
        for name, point in report.operating_points.items()
        if name != report.strategy
        and low <= point.threshold <= high
        and abs(point.f1 - chosen.f1) > MATERIAL_DICE
    ]
    if not inside:
        return None
    name, point = inside[0]
    return _warning(
        "wide_interval",
        "warn",
        f"the 95% interval of the threshold, [{low:.4g}, {high:.4g}], includes the {name!r} "
        f"operating point ({point.threshold:.4g}, Dice {point.f1:.3f} against {chosen.f1:.3f}): "
        "this set cannot tell apart thresholds that segment differently. Calibrate on more "
        "images",
    )


def _images_disagree(report: CalibrationReport) -> HealthWarning | None:
    spread = report.per_image_thresholds
    if spread is None or spread.n_images < MIN_IMAGES:
        return None
    if report.is_probability:
        width = _logit(spread.q75) - _logit(spread.q25)
        wide, unit = width > DISAGREE_LOGITS, f"{width:.2f} logits"
    else:
        width = spread.q75 - spread.q25
        wide = width > DISAGREE_RELATIVE * abs(spread.median)
        unit = f"{width:.4g}, more than the median {spread.median:.4g}"
    if not wide:
        return None
    return _warning(
        "images_disagree",
        "warn",
        f"each image's own best threshold varies widely (middle half from {spread.q25:.4g} to "
        f"{spread.q75:.4g}, {unit}): one threshold fits some images much worse than others. "
        "Check whether the set mixes kinds of image that need separate models or calibrations",
    )


def _tied_scores(report: CalibrationReport) -> HealthWarning | None:
    at_min = report.tied_at_min_fraction
    at_max = report.score_range.tied_at_max_fraction
    if max(at_min, at_max) <= TIED_FRACTION:
        return None
    share, score = (at_min, report.score_range.min)
    if at_max > at_min:
        share, score = at_max, report.score_range.max
    return _warning(
        "tied_scores",
        "warn",
        f"{share:.0%} of the pixels share the single score {score:.4g}, so no threshold can "
        "split them (a ReLU head puts pixels on 0, a saturated sigmoid on 1.0): only the rest "
        "of the pixels are ranked. Prefer a sigmoid head trained on logits",
    )


def _not_a_probability(report: CalibrationReport) -> HealthWarning | None:
    if report.is_probability:
        return None
    return _warning(
        "not_a_probability",
        "info",
        f"the head's output is an unbounded score, so the threshold {report.threshold:.4g} is a "
        "score, not a probability: it cannot be compared with 0.5 or read as confidence, and "
        "it is tied to these weights. Recalibrate after every retraining",
    )


def _worse_than_fixed(report: CalibrationReport, criterion: Criterion) -> HealthWarning | None:
    chosen, fixed = report.chosen, report.operating_points.get("fixed_0.5")
    if fixed is None or chosen.threshold == fixed.threshold:
        return None
    strategy = report.strategy
    if strategy in _DICE_JUDGED:
        worse = chosen.f1 < fixed.f1
        what = f"Dice {chosen.f1:.4f} against {fixed.f1:.4f}"
    elif strategy == "cost":
        worse = _cost(chosen, criterion, report) > _cost(fixed, criterion, report)
        what = "a higher expected cost"
    else:
        worse = strategy in TARGET_STRATEGIES and _beats_on_target(fixed, chosen, criterion)
        what = f"the {strategy} target met with a worse rate"
    if not worse:
        return None
    return _warning(
        "worse_than_fixed",
        "warn",
        f"on the calibration set the chosen threshold {chosen.threshold:.4g} ({strategy}) does "
        f"worse than the conventional cut at 0.5: {what}. Use strategy 'f1' for the best Dice, "
        "or keep 0.5",
    )


def _cost(point: OperatingPoint, criterion: Criterion, report: CalibrationReport) -> float:
    prevalence = report.positive_fraction
    return criterion.cost_fp * (1.0 - prevalence) * point.fpr + criterion.cost_fn * (
        prevalence * (1.0 - point.tpr)
    )


def _beats_on_target(fixed: OperatingPoint, chosen: OperatingPoint, criterion: Criterion) -> bool:
    """Whether 0.5 meets the target and does better on the rate the strategy optimises."""
    target = criterion.target
    if target is None:
        return False
    if criterion.strategy == "target_tpr":
        return fixed.tpr >= target and fixed.fpr < chosen.fpr
    if criterion.strategy == "target_fpr":
        return fixed.fpr <= target and fixed.tpr > chosen.tpr
    precision = fixed.precision
    return precision is not None and precision >= target and fixed.tpr > chosen.tpr


def _logit(p: float) -> float:
    p = min(max(p, 1e-12), 1.0 - 1e-12)
    return math.log(p) - math.log1p(-p)

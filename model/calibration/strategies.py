"""Threshold strategies, each exact over a set of candidate thresholds.

Every function here works on cumulative counts in scikit-learn's `roc_curve` order: candidate
thresholds from the highest down, index 0 being a threshold above every score (nothing positive),
``tp[i]`` and ``fp[i]`` the positive and negative pixels with ``score >= thresholds[i]``, so both
are non-decreasing and ``tp[-1]``, ``fp[-1]`` are the totals P and N. Counts are float64 (exact
integers up to 2**53 pixels).

Ties: a criterion that several thresholds share is resolved toward the highest threshold (the first
index, as ``np.argmax`` on scikit-learn's curve does), except where the strategy says otherwise:

``youden``            max TPR - FPR.
``closest``           min FPR**2 + (1 - TPR)**2, the distance to the (0, 1) corner.
``f1``                max 2 TP / (2 TP + FP + FN), pixel Dice.
``target_tpr``        min FPR subject to TPR >= target; ties in FPR go to the higher TPR.
``target_fpr``        max TPR subject to FPR <= target; ties in TPR go to the lower FPR.
``target_precision``  max recall subject to precision >= target (thresholds that select no pixel
                      have no precision and are skipped); ties in recall go to the higher precision.
``cost``              min ``cost_fp * FP + cost_fn * FN``. Divided by the pixel count this is the
                      expected cost per pixel,
                      ``cost_fp * (1 - pi) * FPR + cost_fn * pi * (1 - TPR)``, with ``pi`` the
                      calibration set's prevalence: the set is taken to represent the class
                      balance the model will meet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from model.errors import CalibrationError

STRATEGIES: tuple[str, ...] = (
    "youden",
    "closest",
    "f1",
    "target_tpr",
    "target_fpr",
    "target_precision",
    "cost",
)
TARGET_STRATEGIES: tuple[str, ...] = ("target_tpr", "target_fpr", "target_precision")
# Per-image risks with a finite-sample guarantee (`model.calibration.conformal`); their target is
# alpha. They need per-image counts, so `select` on pooled counts cannot choose for them.
GUARANTEE_STRATEGIES: tuple[str, ...] = ("fnr_control", "fdr_control")
ALL_STRATEGIES: tuple[str, ...] = STRATEGIES + GUARANTEE_STRATEGIES
LTT_PROCEDURES: tuple[str, ...] = ("fixed_sequence", "holm")
DEFAULT_DELTA = 0.1
_TARGET_NAMES = {
    "target_tpr": "TPR",
    "target_fpr": "FPR",
    "target_precision": "precision",
    "fnr_control": "alpha (the per-image false negative rate to control)",
    "fdr_control": "alpha (the per-image false discovery rate to control)",
}


@dataclass(frozen=True)
class Criterion:
    """How a threshold is chosen: a strategy and its parameters, checked once when built.

    Raises CalibrationError (a ValueError) with a message naming the fix when the strategy is
    unknown, a target strategy lacks its target in (0, 1), another strategy is given one, or the
    costs are negative, not finite or both 0. After that, only the data can stop `select`: a
    class missing from the masks, or a target the curve never reaches.
    """

    # Pixel F1 is Dice, the segmentation criterion: youden, the ROC habit, measurably lowered the
    # shipped model's Dice below the plain 0.5 cut on unseen data.
    strategy: str = "f1"
    target: float | None = None
    cost_fp: float = 1.0
    cost_fn: float = 1.0
    # fdr_control only: the guarantee holds with probability 1 - delta (default 0.1), certified by
    # Learn-then-Test with this procedure over the threshold grid.
    delta: float | None = None
    procedure: str = "fixed_sequence"

    def __post_init__(self) -> None:
        strategy, target = self.strategy, self.target
        if strategy not in ALL_STRATEGIES:
            raise CalibrationError(
                f"unknown strategy {strategy!r}; choose one of {', '.join(ALL_STRATEGIES)}"
            )
        self._check_guarantee()
        if strategy in TARGET_STRATEGIES or strategy in GUARANTEE_STRATEGIES:
            if target is None:
                raise CalibrationError(
                    f"strategy {strategy!r} needs a target {_TARGET_NAMES[strategy]} in (0, 1)"
                )
            t = _as_float(target, "target")
            if not 0.0 < t < 1.0:
                raise CalibrationError(
                    f"target must lie strictly between 0 and 1 for {strategy!r}, got {target!r}"
                )
            object.__setattr__(self, "target", t)
        elif target is not None:
            raise CalibrationError(
                f"strategy {strategy!r} takes no target; targets apply to "
                f"{', '.join(TARGET_STRATEGIES + GUARANTEE_STRATEGIES)}"
            )
        c_fp = _as_float(self.cost_fp, "cost_fp")
        c_fn = _as_float(self.cost_fn, "cost_fn")
        if not (math.isfinite(c_fp) and math.isfinite(c_fn)) or c_fp < 0 or c_fn < 0:
            raise CalibrationError(
                f"cost_fp and cost_fn must be finite and >= 0, got {self.cost_fp!r} and "
                f"{self.cost_fn!r}"
            )
        if c_fp == 0 and c_fn == 0:
            raise CalibrationError(
                "cost_fp and cost_fn cannot both be 0: every threshold would tie"
            )
        # Plain floats from here on, whatever number type the caller gave.
        object.__setattr__(self, "cost_fp", c_fp)
        object.__setattr__(self, "cost_fn", c_fn)

    def _check_guarantee(self) -> None:
        """Checks delta and the procedure, and gives fdr_control its default delta."""
        if self.delta is not None and self.strategy != "fdr_control":
            raise CalibrationError(
                f"strategy {self.strategy!r} takes no delta; delta applies to fdr_control"
            )
        if self.procedure not in LTT_PROCEDURES:
            raise CalibrationError(
                f"unknown procedure {self.procedure!r}; choose one of {', '.join(LTT_PROCEDURES)}"
            )
        if self.strategy != "fdr_control":
            return
        delta = DEFAULT_DELTA if self.delta is None else _as_float(self.delta, "delta")
        if not 0.0 < delta < 1.0:
            raise CalibrationError(
                f"delta must lie strictly between 0 and 1 for 'fdr_control', got {self.delta!r}"
            )
        object.__setattr__(self, "delta", delta)

    def with_strategy(self, strategy: str) -> Criterion:
        """The same costs under another strategy; its target only if that strategy takes one."""
        same = strategy == self.strategy
        target = self.target if same else None
        delta = self.delta if same else None
        procedure = self.procedure if same else "fixed_sequence"
        return Criterion(strategy, target, self.cost_fp, self.cost_fn, delta, procedure)


def _as_float(value: object, name: str) -> float:
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise CalibrationError(f"{name} must be a number, got {value!r}") from None
    if math.isnan(out):
        raise CalibrationError(f"{name} must be a number, got NaN")
    return out


def cumulative_counts(
    pos: NDArray[np.number], neg: NDArray[np.number]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Counts at each threshold, highest first, from per-bin counts in ascending score order.

    Returns ``tp`` and ``fp`` of length ``len(pos) + 1``; index 0 is the threshold above every
    score, index ``i`` the ``i``-th highest bin's lower edge.
    """
    tp = np.zeros(len(pos) + 1, dtype=np.float64)
    fp = np.zeros(len(neg) + 1, dtype=np.float64)
    np.cumsum(pos[::-1], dtype=np.float64, out=tp[1:])
    np.cumsum(neg[::-1], dtype=np.float64, out=fp[1:])
    return tp, fp


def select(tp: NDArray[np.float64], fp: NDArray[np.float64], criterion: Criterion) -> int:
    """Index of the threshold `criterion` chooses on the cumulative counts `tp`, `fp`.

    Raises CalibrationError when the ROC is undefined (no positive or no negative pixel) or the
    target cannot be met.
    """
    strategy, target = criterion.strategy, criterion.target
    cost_fp, cost_fn = criterion.cost_fp, criterion.cost_fn
    if strategy in GUARANTEE_STRATEGIES:
        raise CalibrationError(
            f"strategy {strategy!r} chooses on per-image counts, not pooled ones"
        )
    n_pos, n_neg = float(tp[-1]), float(fp[-1])
    if n_pos <= 0 or n_neg <= 0:
        missing, present = (
            ("foreground", "background") if n_pos <= 0 else ("background", "foreground")
        )
        raise CalibrationError(
            f"the masks hold no {missing} pixels (all {int(n_pos + n_neg)} are {present}), so the "
            "ROC curve is undefined and no threshold can be chosen; calibrate on images that "
            "contain both foreground and background"
        )
    tpr = tp / n_pos
    fpr = fp / n_neg
    if strategy == "youden":
        return int(np.argmax(tpr - fpr))
    if strategy == "closest":
        return int(np.argmin(fpr**2 + (1.0 - tpr) ** 2))
    if strategy == "f1":
        return int(np.argmax(2.0 * tp / (tp + fp + n_pos)))
    if strategy == "cost":
        return int(np.argmin(cost_fp * fp + cost_fn * (n_pos - tp)))
    if target is None:
        raise CalibrationError(f"strategy {strategy!r} needs a target")
    if strategy == "target_tpr":
        first = int(np.argmax(tpr >= target))  # tpr[-1] == 1 > target, so one exists
        # Lower thresholds with the same FP count only add true positives.
        return int(np.searchsorted(fp, fp[first], side="right")) - 1
    if strategy == "target_fpr":
        last = int(np.searchsorted(fpr, target, side="right")) - 1
        if tp[last] == 0:
            raise CalibrationError(
                f"no threshold detects any foreground while keeping FPR <= {target}: the "
                f"top-scored pixels already include {fpr[1]:.3g} of the background "
                "(many background pixels tie at the highest score); raise the target"
            )
        return int(np.searchsorted(tp, tp[last], side="left"))
    if strategy == "target_precision":
        selected = tp + fp
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = np.where(selected > 0, tp / selected, -1.0)
        ok = precision >= target
        if not ok.any():
            raise CalibrationError(
                f"no threshold reaches precision {target}: the best on this set is "
                f"{precision.max():.4g}; lower the target"
            )
        best = tp[ok].max()
        return int(np.argmax(ok & (tp == best)))
    raise CalibrationError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")


def point_metrics(tp: float, fp: float, n_pos: float, n_neg: float) -> dict[str, float | None]:
    """TPR, FPR, precision, F1, IoU and Youden's J of one operating point (None: undefined)."""
    tpr = tp / n_pos
    fpr = fp / n_neg
    return {
        "tpr": tpr,
        "fpr": fpr,
        "precision": tp / (tp + fp) if tp + fp > 0 else None,
        "f1": 2.0 * tp / (tp + fp + n_pos),
        "iou": tp / (fp + n_pos),
        "youden_j": tpr - fpr,
    }

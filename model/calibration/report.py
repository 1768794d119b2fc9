"""The calibration report (README, "The calibration report"), built from a `ScoreHistogram`.

ROC statistics come from scikit-learn run on the bins: each non-empty bin is one score (its lower
edge; the lowest bin takes the lowest score seen) given twice, once as a negative and once as a
positive, weighted by its float64 pixel counts. Because a bin edge splits the pixels exactly, the
curve is the raw-pixel ROC curve at every bin edge; it differs from the raw curve only in treating a
bin's pixels as tied, which moves the AUC by at most the share of positive-negative pairs that
share a bin (under 1e-6 on the benchmark's 1e8 pixels).

Thresholds are in score units: probabilities for probability heads (float64, so 1 - 1e-9 is not
rounded to 1), raw scores otherwise. Every threshold of an unbounded head, and of a probability head
up to 1 - 2**-12, is a float32 number, so comparing a served float32 map with it is exact in either
precision. Above that, compare in float64 (numpy would round a Python float to the map's float32
first); a threshold above 1 - 2**-24 then selects exactly the pixels at 1.0, since a float32 map
holds nothing in between. ``quantisation.threshold_logit`` is the same cut in logit units, for a
service that thresholds the head's logits and so keeps the resolution float32 loses near 1. The
candidate "threshold above every score" (nothing positive) is reported as the smallest float64
above the highest score.

Besides the threshold chosen by the requested strategy, `operating_points` holds every strategy that
needs no target (youden, closest, f1, and cost with the given costs), the chosen target strategy
when there is one, and ``fixed_0.5``: the conventional cut at 0.5 whatever the head, so that the
gain of calibration is visible (for an unbounded head it shows what a naive cut does).

``threshold_ci`` is a 95% bootstrap interval over images (`model.calibration.bootstrap`),
computed on coarse bins (64 per octave) and widened to whole coarse bins, so it is conservative
by up to one coarse bin on each side; it is None with fewer than two images. The same coarse bins
give ``per_image_thresholds``, the spread of each image's own optimum under the chosen strategy
(images without both classes, or where the target is unreachable, are left out).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from model.calibration.conformal import guaranteed_threshold
from model.calibration.drift import score_profile
from model.calibration.health import assess
from model.calibration.histogram import ScoreHistogram
from model.calibration.recalibration import fit_recalibration
from model.calibration.reliability import calibration_quality
from model.calibration.schema import (
    CalibrationReport,
    Confusion,
    OperatingPoint,
    PerImageSpread,
    ProbabilityQuantisation,
    Recalibration,
    ReliabilityRow,
    Roc,
    ScoreRange,
    UnboundedQuantisation,
)
from model.calibration.strategies import (
    GUARANTEE_STRATEGIES,
    STRATEGIES,
    TARGET_STRATEGIES,
    Criterion,
    cumulative_counts,
    point_metrics,
    select,
)
from model.errors import CalibrationError

MAX_ROC_POINTS = 512
FIXED_CUT = 0.5
# Below this many usable bootstrap replicates the interval says more about the noise than the data.
_MIN_REPLICATES = 20


def build_report(
    hist: ScoreHistogram,
    criterion: Criterion = Criterion(),
    reference_auc: float | None = None,
    recalibrate: str | None = None,
) -> CalibrationReport:
    """The calibration report of a filled histogram, its threshold chosen by `criterion`.

    Its `warnings` (`model.calibration.health`) compare the AUC with `reference_auc`, the
    model's known AUC, when given; its `score_profile` is the reference for drift. With
    `recalibrate` (temperature, platt or isotonic; the histogram kept a pixel sample) it also
    fits and judges a recalibration (`model.calibration.recalibration`).
    """
    if hist.n_images == 0:
        raise CalibrationError("the calibration set is empty: give at least one image and mask")
    idx, pos, neg = hist.nonempty()
    tp, fp = cumulative_counts(pos, neg)
    n_pos, n_neg = float(tp[-1]), float(fp[-1])
    edges = hist.fine.lower_edges(idx)
    bin_thresholds = edges.copy()
    bin_thresholds[0] = hist.score_min  # exact too, and finite where the lowest edge is -inf
    above_all = float(np.nextafter(hist.score_max, np.inf))
    thresholds = np.concatenate([[above_all], bin_thresholds[::-1]])

    guarantee = None
    if criterion.strategy in GUARANTEE_STRATEGIES:
        # The ROC needs both classes all the same: f1 raises the ROC-undefined error if not.
        select(tp, fp, criterion.with_strategy("f1"))
        cut, guarantee = guaranteed_threshold(hist.per_image, hist.coarse, above_all, criterion)
        # A coarse edge is a fine edge: the same pixels, at the lowest fine edge at or above it.
        chosen = int(np.count_nonzero(edges >= cut))
    else:
        # Raises the ROC-undefined error when a class is missing.
        chosen = select(tp, fp, criterion)

    fpr, tpr, auc, ap = _sklearn_roc(bin_thresholds, pos, neg)
    threshold = float(thresholds[chosen])

    def point(i: int, at: float) -> OperatingPoint:
        return OperatingPoint.model_validate(
            {"threshold": at, **point_metrics(tp[i], fp[i], n_pos, n_neg)}
        )

    points: dict[str, OperatingPoint] = {}
    if guarantee is not None:
        points[criterion.strategy] = point(chosen, float(thresholds[chosen]))
    for name in STRATEGIES:
        if name in TARGET_STRATEGIES and name != criterion.strategy:
            continue
        i = chosen if name == criterion.strategy else select(tp, fp, criterion.with_strategy(name))
        points[name] = point(i, float(thresholds[i]))
    # 0.5 is a bin edge in both layouts, so the bins at or above it are exactly the pixels >= 0.5.
    i_cut = int(np.count_nonzero(edges >= FIXED_CUT))
    points["fixed_0.5"] = point(i_cut, FIXED_CUT)

    keep = _curve_indices(tp, fp, must=(0, len(tp) - 1, chosen, i_cut))
    roc = Roc(fpr=fpr[keep].tolist(), tpr=tpr[keep].tolist(), thresholds=thresholds[keep].tolist())

    brier: float | None = None
    ece: float | None = None
    table: list[dict[str, Any]] | None = None
    if hist.is_probability:
        brier, ece, table = calibration_quality(hist)

    b_chosen = int(idx[len(idx) - chosen]) if chosen > 0 else None
    report = CalibrationReport(
        threshold=threshold,
        strategy=criterion.strategy,
        target=criterion.target,
        auc=auc,
        average_precision=ap,
        n_images=hist.n_images,
        n_pixels=hist.n_pixels,
        positive_fraction=n_pos / hist.n_pixels,
        is_probability=hist.is_probability,
        roc=roc,
        operating_points=points,
        confusion=Confusion(
            tp=int(tp[chosen]),
            fp=int(fp[chosen]),
            tn=int(n_neg - fp[chosen]),
            fn=int(n_pos - tp[chosen]),
        ),
        threshold_ci=_bootstrap_interval(hist, criterion, above_all),
        brier=_finite(brier),
        ece=_finite(ece),
        reliability=None if table is None else tuple(map(ReliabilityRow.model_validate, table)),
        tied_at_min_fraction=hist.n_at_min / hist.n_pixels,
        per_image_thresholds=_per_image_spread(hist, criterion),
        score_range=ScoreRange(
            min=hist.score_min,
            max=hist.score_max,
            tied_at_max_fraction=hist.n_at_max / hist.n_pixels,
        ),
        quantisation=_quantisation(hist, b_chosen, threshold),
        score_profile=score_profile(hist, threshold),
        guarantee=guarantee,
        recalibration=_recalibration(hist, recalibrate),
    )
    return report.model_copy(update={"warnings": assess(report, criterion, reference_auc)})


def calibrate_arrays(
    pairs: Iterable[tuple[Any, Any]],
    scale: str = "probability",
    criterion: Criterion = Criterion(),
    *,
    logits: bool = False,
    n_bootstrap: int = 200,
    seed: int = 0,
    reference_auc: float | None = None,
    recalibrate: str | None = None,
) -> CalibrationReport:
    """Calibrate on (score map, mask) pairs in one streaming pass and return the report."""
    hist = ScoreHistogram(
        scale,
        n_bootstrap=n_bootstrap,
        seed=seed,
        per_image=criterion.strategy in GUARANTEE_STRATEGIES,
        sample_pixels=recalibrate is not None,
    )
    for scores, mask in pairs:
        hist.update(scores, mask, logits=logits)
    return build_report(hist, criterion, reference_auc, recalibrate)


def _sklearn_roc(
    bin_thresholds: NDArray[np.float64], pos: NDArray[np.int64], neg: NDArray[np.int64]
) -> tuple[NDArray[np.float64], NDArray[np.float64], float, float]:
    """FPR, TPR (every bin, highest threshold first), AUC and AP from scikit-learn on the bins."""
    # Highest first, as scikit-learn sorts, so its stable sort has nothing to do.
    score = np.concatenate([bin_thresholds[::-1], bin_thresholds[::-1]])
    label = np.concatenate([np.ones(len(pos), np.int8), np.zeros(len(neg), np.int8)])
    weight = np.concatenate([pos[::-1], neg[::-1]]).astype(np.float64)
    used = weight > 0
    score, label, weight = score[used], label[used], weight[used]
    fpr, tpr, _ = roc_curve(label, score, sample_weight=weight, drop_intermediate=False)
    auc = roc_auc_score(label, score, sample_weight=weight)
    ap = average_precision_score(label, score, sample_weight=weight)
    if len(fpr) != len(pos) + 1:  # every bin is a distinct score, so this is a bug
        raise AssertionError("scikit-learn merged bins; bin thresholds are not distinct")
    return fpr, tpr, float(auc), float(ap)


def _curve_indices(
    tp: NDArray[np.float64], fp: NDArray[np.float64], must: tuple[int, ...]
) -> NDArray[np.intp]:
    """At most MAX_ROC_POINTS indices of the curve: its corners, evenly spread, plus `must`."""
    n = len(tp)
    if n <= MAX_ROC_POINTS:
        return np.arange(n)
    # scikit-learn's drop_intermediate rule on exact counts: a point collinear with its neighbours
    # adds nothing to the plotted curve.
    corner = np.concatenate([[True], (np.diff(fp, 2) != 0) | (np.diff(tp, 2) != 0), [True]])
    candidates = np.flatnonzero(corner)
    room = MAX_ROC_POINTS - len(must)
    if len(candidates) > room:
        # Even steps along the curve's length in (FPR + TPR), which is monotone along the curve.
        arc = fp[candidates] / fp[-1] + tp[candidates] / tp[-1]
        at = np.searchsorted(arc, np.linspace(0.0, 2.0, room))
        candidates = candidates[np.minimum(at, len(candidates) - 1)]
    return np.unique(np.concatenate([candidates, np.asarray(must, dtype=np.intp)]))


def _coarse_choice(
    hist: ScoreHistogram,
    counts: NDArray[np.number],
    criterion: Criterion,
) -> tuple[float, float] | None:
    """The coarse bin a strategy picks on one coarse histogram: its (lower, upper) edge."""
    pos = counts[1::2]
    neg = counts[0::2]
    idx = np.flatnonzero((pos > 0) | (neg > 0))
    tp, fp = cumulative_counts(pos[idx], neg[idx])
    try:
        i = select(tp, fp, criterion)
    except CalibrationError:
        return None
    if i == 0:
        top = float(hist.coarse.upper_edges(idx[-1:])[0])
        return top, top
    b = idx[len(idx) - i : len(idx) - i + 1]
    return float(hist.coarse.lower_edges(b)[0]), float(hist.coarse.upper_edges(b)[0])


def _bootstrap_interval(
    hist: ScoreHistogram, criterion: Criterion, above_all: float
) -> tuple[float, float] | None:
    """95% interval of the chosen threshold over Poisson-bootstrap replicates of the images."""
    if hist.n_images < 2 or hist.resampler.n_bootstrap == 0:
        return None
    picks = [_coarse_choice(hist, rep, criterion) for rep in hist.resampler.replicates()]
    found = [p for p in picks if p is not None]
    if len(found) < _MIN_REPLICATES:
        return None
    lower = np.quantile([p[0] for p in found], 0.025, method="lower")
    upper = np.quantile([p[1] for p in found], 0.975, method="higher")
    # Coarse edges reach past the data (down to -inf, up to a whole bin above the top score).
    return (
        float(min(max(lower, hist.score_min), above_all)),
        float(min(max(upper, hist.score_min), above_all)),
    )


def _per_image_spread(hist: ScoreHistogram, criterion: Criterion) -> PerImageSpread | None:
    """Quantiles of per-image optimal thresholds over the reservoir of kept images."""
    picks = [_coarse_choice(hist, counts, criterion) for counts in hist.resampler.kept()]
    values = np.array([p[0] for p in picks if p is not None], dtype=np.float64)
    if values.size == 0:
        return None
    values = np.clip(values, hist.score_min, None)
    q25, median, q75 = np.quantile(values, [0.25, 0.5, 0.75])
    return PerImageSpread(
        median=float(median),
        q25=float(q25),
        q75=float(q75),
        min=float(values.min()),
        max=float(values.max()),
        n_images=int(values.size),
        sampled=hist.resampler.sampled,
    )


def _quantisation(
    hist: ScoreHistogram, chosen_bin: int | None, threshold: float
) -> ProbabilityQuantisation | UnboundedQuantisation:
    """The bin layout, and the chosen threshold's bin and (probability heads) logit."""
    threshold_bin: tuple[float | None, float | None] = (threshold, threshold)
    if chosen_bin is not None:
        b = np.array([chosen_bin])
        threshold_bin = (
            _finite(max(float(hist.fine.lower_edges(b)[0]), hist.score_min)),
            _finite(float(hist.fine.upper_edges(b)[0])),
        )
    threshold_logit: float | None = None
    if hist.is_probability:
        if chosen_bin is not None and threshold != hist.score_min:
            threshold_logit = float(hist.fine.logit_of_edges(np.array([chosen_bin]))[0])
        elif 0.0 < threshold < 1.0:
            threshold_logit = math.log(threshold) - math.log1p(-threshold)
    kind = ProbabilityQuantisation if hist.is_probability else UnboundedQuantisation
    return kind.model_validate(
        {
            **hist.fine.describe(),
            "threshold_bin": threshold_bin,
            "threshold_logit": _finite(threshold_logit),
            "logits_binned": hist.saw_logits,
        }
    )


def _recalibration(hist: ScoreHistogram, method: str | None) -> Recalibration | None:
    """The fitted recalibration, if one was asked for."""
    if method is None:
        return None
    if hist.sample is None:
        raise CalibrationError(
            f"recalibrate={method} needs a pixel sample: fill the histogram with sample_pixels=True"
        )
    feature = "logit" if hist.is_probability else "score"
    return fit_recalibration(hist.sample, method, feature)


def _finite(value: float | None) -> float | None:
    """None for a number JSON cannot hold (NaN, infinities), else the value as a Python float."""
    return None if value is None or not math.isfinite(value) else float(value)

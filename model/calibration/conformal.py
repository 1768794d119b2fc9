"""Thresholds with a finite-sample guarantee: conformal risk control and Learn-then-Test.

Both work on per-image losses read off per-image histograms (`PerImageCounts`, filled in the
calibration pass beside the pixel histogram, on the coarse bins: 64 per octave). The candidate
thresholds are the coarse bins' lower edges, highest first, index 0 being a threshold above every
score; a pixel is positive when ``score >= threshold``.

``fnr_control`` (target = alpha): conformal risk control (Angelopoulos, Bates, Fisch, Lei and
Schuster, "Conformal Risk Control", ICLR 2024) of the per-image false negative rate
``FN / (TP + FN)``, a loss bounded by B = 1 that only falls as the threshold falls. The threshold is
the highest candidate with ``n / (n + 1) * R(t) + B / (n + 1) <= alpha``, R the mean loss over the
``n`` calibration images; then, for a new image exchangeable with them,
``E[FNR] <= alpha`` (marginal: an average over images and calibration sets, not a promise per
image). Images whose truth is empty have no FNR: they are left out of the risk and counted. Needs
``n >= 1 / alpha - 1`` images with foreground.

``fdr_control`` (target = alpha, delta): Learn-then-Test (Angelopoulos, Bates, Candes, Jordan and
Lei, 2021) on the per-image false discovery rate ``FP / (TP + FP)``; an image whose prediction is
empty makes no false discovery (loss 0, counted). Each candidate's null "risk > alpha" is tested
with the Hoeffding-Bentkus p-value, by fixed-sequence testing from the highest threshold down
(stop at the first candidate not rejected) or by Holm's procedure over the grid; every rejected
candidate has ``P(risk <= alpha) >= 1 - delta`` jointly, and the one with the best pixel Dice on
the calibration set is chosen.

Memory: ``PerImageCounts`` holds 2 x (coarse bins) int32 counts per image, 19.5 KB for a
probability head (2,436 bins) and 24.6 KB for an unbounded one (3,077 bins): 19.5 MB per 1,000
images, whatever their size. Nothing here grows with the number of pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.stats import binom

from model.calibration.binning import BinLayout
from model.calibration.schema import Guarantee, PerImageRisk
from model.calibration.strategies import Criterion
from model.errors import GuaranteeError

PROCEDURES: tuple[str, ...] = ("fixed_sequence", "holm")
BOUND = 1.0  # both losses are rates in [0, 1]
FNR_EMPTY_POLICY = (
    "images whose mask has no foreground have no false negative rate: they are left out of the "
    "risk and n_images, and counted in per_image.n_excluded"
)
FDR_EMPTY_POLICY = (
    "an image with nothing predicted at a threshold makes no false discovery (loss 0); counted "
    "in per_image.n_excluded at the chosen threshold"
)


class PerImageCounts:
    """Per-image coarse histograms of one calibration pass: images x bins, not pixels."""

    def __init__(self, n_codes: int) -> None:
        """Empty; each image adds `n_codes` counts (code ``2 * bin + label``)."""
        self.n_codes = n_codes
        self._rows: list[NDArray[np.int32]] = []

    def add(self, counts: NDArray[np.integer]) -> None:
        """Keep one image's coarse counts (an image has fewer than 2**31 pixels)."""
        self._rows.append(np.asarray(counts, dtype=np.int32))

    def __len__(self) -> int:
        """How many images were added."""
        return len(self._rows)

    def matrix(self) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """Positive and negative counts, images x bins, bins in ascending score order."""
        if not self._rows:
            empty = np.zeros((0, self.n_codes // 2), dtype=np.int64)
            return empty, empty
        m = np.stack(self._rows).astype(np.int64)
        return m[:, 1::2], m[:, 0::2]

    @property
    def nbytes(self) -> int:
        """Memory held, in bytes: 4 x n_codes per image."""
        return 4 * self.n_codes * len(self._rows)


@dataclass(frozen=True)
class ImageCurves:
    """Per-image cumulative counts over a common grid of candidate thresholds, highest first.

    ``tp[i, k]`` and ``fp[i, k]`` count image i's positive and negative pixels at or above
    ``thresholds[k]``; column 0 is the threshold above every score (nothing selected).
    """

    thresholds: NDArray[np.float64]
    tp: NDArray[np.float64]
    fp: NDArray[np.float64]

    @property
    def n_pos(self) -> NDArray[np.float64]:
        """Each image's foreground pixel count."""
        return self.tp[:, -1]


def image_curves(
    pos: NDArray[np.int64], neg: NDArray[np.int64], lower_edges: NDArray[np.float64], top: float
) -> ImageCurves:
    """Cumulative per-image counts at the bins any image uses; `top` is above every score."""
    used = np.flatnonzero((pos.sum(axis=0) > 0) | (neg.sum(axis=0) > 0))
    p = pos[:, used[::-1]]
    n = neg[:, used[::-1]]
    zero = np.zeros((pos.shape[0], 1))
    tp = np.concatenate([zero, np.cumsum(p, axis=1, dtype=np.float64)], axis=1)
    fp = np.concatenate([zero, np.cumsum(n, axis=1, dtype=np.float64)], axis=1)
    thresholds = np.concatenate([[top], lower_edges[used[::-1]]])
    return ImageCurves(thresholds, tp, fp)


def fnr_losses(curves: ImageCurves) -> tuple[NDArray[np.float64], int]:
    """Per-image FNR at every candidate (images with foreground), and how many were left out."""
    keep = curves.n_pos > 0
    tp = curves.tp[keep]
    return 1.0 - tp / tp[:, -1:], int(np.count_nonzero(~keep))


def fdr_losses(curves: ImageCurves) -> NDArray[np.float64]:
    """Per-image FDR at every candidate; 0 where the image has nothing predicted."""
    selected = curves.tp + curves.fp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(selected > 0, curves.fp / selected, 0.0)


def crc_index(losses: NDArray[np.float64], alpha: float, bound: float = BOUND) -> int | None:
    """The first (highest) candidate with n/(n+1) R + B/(n+1) <= alpha; None if there is none."""
    n = losses.shape[0]
    if n == 0:
        return None
    risk = losses.mean(axis=0)
    ok = n / (n + 1) * risk + bound / (n + 1) <= alpha
    return int(np.argmax(ok)) if ok.any() else None


def hb_pvalue(risk: NDArray[np.float64], n: int, alpha: float) -> NDArray[np.float64]:
    """Hoeffding-Bentkus p-values of the nulls "mean loss > alpha" given empirical risks."""
    r = np.minimum(risk, alpha)
    with np.errstate(divide="ignore", invalid="ignore"):
        h1 = np.where(
            r > 0,
            r * np.log(r / alpha),
            0.0,
        ) + (1 - r) * np.log((1 - r) / (1 - alpha))
    hoeffding = np.exp(-n * h1)
    bentkus = math.e * binom.cdf(np.ceil(n * risk), n, alpha)
    return np.minimum(np.minimum(hoeffding, bentkus), 1.0)


def ltt_certified(
    losses: NDArray[np.float64], alpha: float, delta: float, procedure: str = "fixed_sequence"
) -> NDArray[np.bool_]:
    """Which candidates Learn-then-Test certifies (risk <= alpha, jointly with 1 - delta)."""
    n = losses.shape[0]
    p = hb_pvalue(losses.mean(axis=0), n, alpha)
    if procedure == "fixed_sequence":
        # Candidates in order, highest threshold first: the first one not rejected ends the run.
        failed = p > delta
        stop = int(np.argmax(failed)) if failed.any() else len(p)
        out = np.zeros(len(p), dtype=bool)
        out[:stop] = True
        return out
    if procedure == "holm":
        order = np.argsort(p, kind="stable")
        m = len(p)
        passes = p[order] <= delta / (m - np.arange(m))
        stop = int(np.argmax(~passes)) if (~passes).any() else m
        out = np.zeros(m, dtype=bool)
        out[order[:stop]] = True
        return out
    raise GuaranteeError(f"unknown procedure {procedure!r}; choose one of {', '.join(PROCEDURES)}")


def _spread(values: NDArray[np.float64], alpha: float, n_excluded: int) -> PerImageRisk:
    return PerImageRisk(
        median=float(np.median(values)),
        p90=float(np.quantile(values, 0.9)),
        above_2alpha=float(np.mean(values > 2 * alpha)),
        n_excluded=n_excluded,
    )


def choose_fnr(curves: ImageCurves, alpha: float) -> tuple[float, Guarantee]:
    """The fnr_control threshold and its guarantee; GuaranteeError when none can be certified."""
    losses, n_empty = fnr_losses(curves)
    n = losses.shape[0]
    k = crc_index(losses, alpha)
    if k is None:
        need = math.ceil(1 / alpha - 1)
        raise GuaranteeError(
            f"fnr_control cannot certify a false negative rate of {alpha:g} with {n} images that "
            f"hold foreground ({n_empty} had none): the bound needs at least {need}; add images "
            "or raise the target"
        )
    at = losses[:, k]
    statement = (
        f"On a new image exchangeable with these {n} calibration images (drawn the same way), "
        f"the expected share of its foreground pixels missed at this threshold is at most "
        f"{alpha:g} (conformal risk control). This is an average over images, not a promise for "
        f"each one: on the calibration set the median image misses {np.median(at):.3g} and "
        f"{np.mean(at > 2 * alpha):.1%} of images miss more than {2 * alpha:g}."
    )
    guarantee = Guarantee(
        risk="fnr",
        alpha=alpha,
        delta=None,
        n_images=n,
        bound=BOUND,
        empty_policy=FNR_EMPTY_POLICY,
        calibration_risk=float(at.mean()),
        per_image=_spread(at, alpha, n_empty),
        statement=statement,
    )
    return float(curves.thresholds[k]), guarantee


def choose_fdr(
    curves: ImageCurves, alpha: float, delta: float, procedure: str = "fixed_sequence"
) -> tuple[float, Guarantee]:
    """The fdr_control threshold (best Dice among certified) and its guarantee."""
    losses = fdr_losses(curves)
    n = losses.shape[0]
    certified = ltt_certified(losses, alpha, delta, procedure)
    certified[0] = False  # selecting nothing certifies trivially and is no threshold
    tp = curves.tp.sum(axis=0)
    fp = curves.fp.sum(axis=0)
    n_pos = tp[-1]
    certified &= tp > 0
    if not certified.any():
        raise GuaranteeError(
            f"fdr_control cannot certify a false discovery rate of {alpha:g} with confidence "
            f"{1 - delta:g} on {n} images: no threshold that selects any foreground passes "
            f"Learn-then-Test ({procedure}); add images, raise the target or raise delta"
        )
    dice = np.where(certified, 2 * tp / (tp + fp + n_pos), -1.0)
    k = int(np.argmax(dice))
    at = losses[:, k]
    n_empty = int(np.count_nonzero(curves.tp[:, k] + curves.fp[:, k] == 0))
    statement = (
        f"With probability at least {1 - delta:g} over the draw of these {n} calibration images, "
        f"the expected share of false discoveries among a new image's predicted foreground is at "
        f"most {alpha:g} at this threshold (Learn-then-Test, {procedure.replace('_', '-')} "
        f"testing). It is an average over images exchangeable with these, not a promise for each."
    )
    guarantee = Guarantee(
        risk="fdr",
        alpha=alpha,
        delta=delta,
        n_images=n,
        bound=BOUND,
        empty_policy=FDR_EMPTY_POLICY,
        calibration_risk=float(at.mean()),
        per_image=_spread(at, alpha, n_empty),
        statement=statement,
    )
    return float(curves.thresholds[k]), guarantee


def guaranteed_threshold(
    counts: PerImageCounts | None, coarse: BinLayout, top: float, criterion: Criterion
) -> tuple[float, Guarantee]:
    """The threshold a guaranteed strategy chooses from per-image counts, with its guarantee."""
    if counts is None or len(counts) == 0:
        raise GuaranteeError(
            f"strategy {criterion.strategy!r} needs per-image counts: fill the histogram with "
            "per_image=True"
        )
    alpha = criterion.target
    if alpha is None:  # Criterion refuses this; kept for the type checker
        raise GuaranteeError(f"strategy {criterion.strategy!r} needs a target alpha in (0, 1)")
    pos, neg = counts.matrix()
    edges = coarse.lower_edges(np.arange(pos.shape[1]))
    curves = image_curves(pos, neg, edges, top)
    if criterion.strategy == "fnr_control":
        return choose_fnr(curves, alpha)
    delta = criterion.delta if criterion.delta is not None else 0.1
    return choose_fdr(curves, alpha, delta, criterion.procedure)


def describe_guarantee(g: Guarantee | None) -> list[str]:
    """The guarantee in a few lines of text (none without one), for a terminal."""
    if g is None:
        return []
    delta = "" if g.delta is None else f", delta {g.delta:g}"
    return [
        f"guarantee: {g.risk.upper()} <= {g.alpha:g}{delta} on {g.n_images} images "
        f"(calibration risk {g.calibration_risk:.4f}; per image: median "
        f"{g.per_image.median:.4f}, 90th percentile {g.per_image.p90:.4f}, "
        f"{g.per_image.above_2alpha:.1%} above {2 * g.alpha:g})",
        f"  {g.statement}",
        f"  empty images: {g.empty_policy}",
    ]

"""Recalibrated probabilities: a strictly increasing map fitted on held-in images, judged on others.

The calibration pass keeps a uniform sample of each image's pixels (`PixelSample`: at most
`per_image` pixels per image, 5 bytes each: 20 KB per image by default). Images, never pixels, are
split in two (scikit-learn's `GroupShuffleSplit`, so no image has pixels on both sides): the map is
fitted with scikit-learn on one half and ECE and Brier are measured, before and after, on the other
half, each with a 95% bootstrap interval over the held-out images, overall and on the labelled
foreground.

The feature is the head's logit for probability heads (the raw score for unbounded ones) and the map
goes to a calibrated logit:

``temperature``  ``z / T`` (logistic regression without intercept; probability heads only);
``platt``        ``a z + b`` (logistic regression), ``a > 0``;
``isotonic``     isotonic regression, made strictly increasing by joining its blocks' centres with
                 straight lines (in logit), extended past the ends with the end slopes.

Every map is strictly increasing, so it keeps the order of pixels: the AUC is the same (checked to
1e-9 on the held-out pixels, in logit, where float64 does not saturate) and a mask cut at ``t`` is
the mask cut at ``map(t)`` on the mapped scores. `MonotoneMap` applies a fitted map to a served
score map and to a threshold, and back (`inverse`) for a threshold a client gives on the new scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupShuffleSplit

from model.calibration.schema import Interval, Recalibration, RecalibrationQuality
from model.errors import CalibrationError

METHODS: tuple[str, ...] = ("temperature", "platt", "isotonic")
N_ECE_BINS = 15
# Logits past this are probability 0 or 1 in float64 for any practical purpose; keeps inf out.
LOGIT_CLIP = 40.0
_MIN_IMAGES = 4
MIN_SLOPE = 1e-3


@dataclass
class PixelSample:
    """A uniform sample of each image's pixels: feature (logit or score) and label."""

    per_image: int = 4096
    seed: int = 0
    features: list[NDArray[np.float32]] = field(default_factory=list)
    labels: list[NDArray[np.bool_]] = field(default_factory=list)

    def add(self, scores: NDArray[np.floating], mask: NDArray[np.generic], as_logit: bool) -> None:
        """Keep at most `per_image` pixels of one image (flat scores and mask).

        `as_logit`: the scores are probabilities, kept as their logits.
        """
        rng = np.random.default_rng([self.seed, len(self.features)])
        n = scores.size
        take = rng.choice(n, self.per_image, replace=False) if n > self.per_image else slice(None)
        kept = scores[take]
        feature = logit_of(kept) if as_logit else kept
        self.features.append(np.asarray(feature, dtype=np.float32))
        self.labels.append(np.asarray(mask[take]) != 0)

    @property
    def n_images(self) -> int:
        """Images sampled so far."""
        return len(self.features)

    @property
    def nbytes(self) -> int:
        """Memory held, in bytes (at most 5 x per_image per image)."""
        return sum(f.nbytes + y.nbytes for f, y in zip(self.features, self.labels, strict=True))


def logit_of(p: NDArray[np.floating]) -> NDArray[np.float64]:
    """The logit of probabilities, in float64, clipped to +-LOGIT_CLIP (0 and 1 included)."""
    q = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore"):
        z = np.log(q) - np.log1p(-q)
    return np.clip(z, -LOGIT_CLIP, LOGIT_CLIP)


def sigmoid(z: NDArray[np.floating]) -> NDArray[np.float64]:
    """The logistic function in float64, without overflow."""
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@dataclass(frozen=True)
class MonotoneMap:
    """A strictly increasing map from the head's scores to calibrated probabilities."""

    feature: str  # "logit": the head's output is a probability; "score": raw unbounded scores
    knots_x: NDArray[np.float64]
    knots_y: NDArray[np.float64]
    slope_low: float
    slope_high: float

    @classmethod
    def of(cls, recalibration: Recalibration) -> MonotoneMap:
        """The map a report's recalibration section describes."""
        return cls(
            recalibration.feature,
            np.asarray(recalibration.knots_x, dtype=np.float64),
            np.asarray(recalibration.knots_y, dtype=np.float64),
            recalibration.slope_low,
            recalibration.slope_high,
        )

    def logit(self, x: NDArray[np.floating]) -> NDArray[np.float64]:
        """The calibrated logit of features `x` (logits or scores)."""
        x = np.asarray(x, dtype=np.float64)
        kx, ky = self.knots_x, self.knots_y
        out = np.interp(x, kx, ky)
        low, high = x < kx[0], x > kx[-1]
        out[low] = ky[0] + self.slope_low * (x[low] - kx[0])
        out[high] = ky[-1] + self.slope_high * (x[high] - kx[-1])
        return out

    def features(self, scores: NDArray[np.floating]) -> NDArray[np.float64]:
        """The head's output as this map's feature (logit of probabilities, else the score)."""
        return logit_of(scores) if self.feature == "logit" else np.asarray(scores, np.float64)

    def probabilities(self, scores: NDArray[np.floating]) -> NDArray[np.float32]:
        """A served score map on the calibrated scale, float32, same shape."""
        return sigmoid(self.logit(self.features(scores))).astype(np.float32)

    def threshold(self, value: float) -> float:
        """A threshold on the head's scale expressed on the calibrated scale."""
        return float(sigmoid(self.logit(self.features(np.array([value]))))[0])

    def inverse(self, value: float) -> float:
        """A threshold on the calibrated scale brought back to the head's scale."""
        if not 0.0 < value < 1.0:
            return value  # 0 selects everything and 1 (almost) nothing on either scale
        y = math.log(value) - math.log1p(-value)
        kx, ky = self.knots_x, self.knots_y
        if y < ky[0]:
            x = kx[0] + (y - ky[0]) / self.slope_low
        elif y > ky[-1]:
            x = kx[-1] + (y - ky[-1]) / self.slope_high
        else:
            x = float(np.interp(y, ky, kx))
        return float(sigmoid(np.array([x]))[0]) if self.feature == "logit" else float(x)


def _fit(method: str, x: NDArray[np.float64], y: NDArray[np.bool_], feature: str) -> MonotoneMap:
    """Fit one method on pixels; the map it defines."""
    if method == "temperature":
        if feature != "logit":
            raise CalibrationError(
                "recalibrate=temperature rescales logits, which an unbounded head does not have; "
                "use platt or isotonic"
            )
        lr = LogisticRegression(fit_intercept=False, C=1e6).fit(x[:, None], y)
        a = float(lr.coef_[0, 0])
        return _linear(a, 0.0, feature, method)
    if method == "platt":
        lr = LogisticRegression(C=1e6).fit(x[:, None], y)
        return _linear(float(lr.coef_[0, 0]), float(lr.intercept_[0]), feature, method)
    if method == "isotonic":
        eps = 1e-6
        iso = IsotonicRegression(y_min=eps, y_max=1 - eps, out_of_bounds="clip").fit(x, y)
        fitted = iso.predict(x)
        # Blocks of equal fitted value: join their centres so the map rises everywhere.
        values, inverse = np.unique(fitted, return_inverse=True)
        centres = np.bincount(inverse, weights=x) / np.bincount(inverse)
        order = np.argsort(centres)
        kx, ky = centres[order], logit_of(values[order])
        keep = np.concatenate([[True], np.diff(kx) > 0])
        kx, ky = kx[keep], ky[keep]
        # Nearly flat segments would tie pixels in float64 and so move the AUC: every segment
        # rises by at least MIN_SLOPE (in logit per unit of the feature).
        for i in range(1, len(ky)):
            ky[i] = max(ky[i], ky[i - 1] + MIN_SLOPE * (kx[i] - kx[i - 1]))
        if len(kx) < 2:
            raise CalibrationError(
                "recalibrate=isotonic found no increasing relation between scores and labels on "
                "the fitting images; use more images with both foreground and background"
            )
        slope_low = max((ky[1] - ky[0]) / (kx[1] - kx[0]), MIN_SLOPE)
        slope_high = max((ky[-1] - ky[-2]) / (kx[-1] - kx[-2]), MIN_SLOPE)
        return MonotoneMap(feature, kx, ky, float(slope_low), float(slope_high))
    raise CalibrationError(f"unknown recalibration {method!r}; choose one of {', '.join(METHODS)}")


def _linear(a: float, b: float, feature: str, method: str) -> MonotoneMap:
    if not a > 0:
        raise CalibrationError(
            f"recalibrate={method} fitted a slope of {a:.3g}: the scores do not rise with the "
            "labels on the fitting images, so no increasing map exists"
        )
    return MonotoneMap(feature, np.array([0.0]), np.array([b]), a, a)


def _per_image_sums(
    p: NDArray[np.float64], y: NDArray[np.bool_], image: NDArray[np.intp], n_images: int
) -> NDArray[np.float64]:
    """Per image and ECE bin: pixel count, sum of p, sum of y; plus per-image squared error."""
    row = np.minimum((p * N_ECE_BINS).astype(np.int64), N_ECE_BINS - 1)
    key = image * N_ECE_BINS + row
    size = n_images * N_ECE_BINS
    out = np.zeros((n_images, N_ECE_BINS * 3 + 1))
    out[:, :N_ECE_BINS] = np.bincount(key, minlength=size).reshape(n_images, -1)
    out[:, N_ECE_BINS : 2 * N_ECE_BINS] = np.bincount(key, p, size).reshape(n_images, -1)
    out[:, 2 * N_ECE_BINS : 3 * N_ECE_BINS] = np.bincount(key, y, size).reshape(n_images, -1)
    out[:, -1] = np.bincount(image, (p - y) ** 2, n_images)
    return out


def _ece_brier(sums: NDArray[np.float64]) -> tuple[float, float]:
    """ECE and Brier of summed per-image statistics (any weighting of images)."""
    count = sums[:N_ECE_BINS]
    n = count.sum()
    if n == 0:
        return math.nan, math.nan
    gap = np.abs(sums[N_ECE_BINS : 2 * N_ECE_BINS] - sums[2 * N_ECE_BINS : 3 * N_ECE_BINS])
    return float(gap.sum() / n), float(sums[-1] / n)


def _quality(
    before: NDArray[np.float64],
    after: NDArray[np.float64],
    y: NDArray[np.bool_],
    image: NDArray[np.intp],
    n_images: int,
    rng: np.random.Generator,
    n_bootstrap: int,
) -> RecalibrationQuality:
    """ECE and Brier before and after, each with a 95% bootstrap interval over images."""
    sb = _per_image_sums(before, y, image, n_images)
    sa = _per_image_sums(after, y, image, n_images)
    weights = rng.poisson(1.0, size=(n_bootstrap, n_images)).astype(np.float64)
    reps_b = [_ece_brier(w @ sb) for w in weights]
    reps_a = [_ece_brier(w @ sa) for w in weights]

    def interval(value: float, reps: list[float]) -> Interval:
        finite = np.array([r for r in reps if math.isfinite(r)])
        low, high = np.quantile(finite, [0.025, 0.975]) if finite.size else (value, value)
        return Interval(value=value, low=float(low), high=float(high))

    eb, bb = _ece_brier(sb.sum(axis=0))
    ea, ba = _ece_brier(sa.sum(axis=0))
    return RecalibrationQuality(
        ece_before=interval(eb, [r[0] for r in reps_b]),
        ece_after=interval(ea, [r[0] for r in reps_a]),
        brier_before=interval(bb, [r[1] for r in reps_b]),
        brier_after=interval(ba, [r[1] for r in reps_a]),
    )


def fit_recalibration(
    sample: PixelSample,
    method: str,
    feature: str,
    *,
    seed: int = 0,
    heldout: float = 0.5,
    n_bootstrap: int = 200,
) -> Recalibration:
    """Fit `method` on some images' sampled pixels and measure it on the others."""
    if method not in METHODS:
        raise CalibrationError(
            f"unknown recalibration {method!r}; choose one of {', '.join(METHODS)}"
        )
    if sample.n_images < _MIN_IMAGES:
        raise CalibrationError(
            f"recalibration needs at least {_MIN_IMAGES} images (half to fit, half to judge), "
            f"got {sample.n_images}"
        )
    x = np.concatenate(sample.features).astype(np.float64)
    y = np.concatenate(sample.labels)
    groups = np.repeat(np.arange(sample.n_images), [len(f) for f in sample.features])
    split = GroupShuffleSplit(n_splits=1, test_size=heldout, random_state=seed)
    fit_idx, test_idx = next(split.split(x, y, groups))
    if y[fit_idx].all() or not y[fit_idx].any() or y[test_idx].all() or not y[test_idx].any():
        raise CalibrationError(
            "recalibration needs foreground and background pixels among both the fitting and "
            "the held-out images; add images with both"
        )
    fitted = _fit(method, x[fit_idx], y[fit_idx], feature)
    xt, yt = x[test_idx], y[test_idx]
    # Renumber the held-out images 0..m-1 for the per-image sums.
    _, image = np.unique(groups[test_idx], return_inverse=True)
    m = int(image.max()) + 1
    raw = sigmoid(xt) if feature == "logit" else np.clip(xt, 0.0, 1.0)
    mapped_logit = fitted.logit(xt)
    mapped = sigmoid(mapped_logit)
    rng = np.random.default_rng(seed)
    overall = _quality(raw, mapped, yt, image, m, rng, n_bootstrap)
    fg = yt
    foreground = _quality(raw[fg], mapped[fg], yt[fg], image[fg], m, rng, n_bootstrap)
    return Recalibration(
        method=method,  # type: ignore[arg-type]
        feature=feature,  # type: ignore[arg-type]
        knots_x=tuple(fitted.knots_x.tolist()),
        knots_y=tuple(fitted.knots_y.tolist()),
        slope_low=fitted.slope_low,
        slope_high=fitted.slope_high,
        ece_before=overall.ece_before.value,
        ece_after=overall.ece_after.value,
        brier_before=overall.brier_before.value,
        brier_after=overall.brier_after.value,
        auc_before=float(roc_auc_score(yt, xt)),
        auc_after=float(roc_auc_score(yt, mapped_logit)),
        n_fit_images=int(np.unique(groups[fit_idx]).size),
        n_heldout_images=m,
        n_heldout_pixels=len(test_idx),
        heldout=overall,
        foreground=foreground,
    )


def describe_recalibration(r: Recalibration | None) -> list[str]:
    """The recalibration's held-out figures in one line of text (none without one)."""
    if r is None:
        return []
    q = r.heldout
    return [
        f"recalibration ({r.method}, {r.n_heldout_images} held-out images): ECE "
        f"{r.ece_before:.4f} -> {r.ece_after:.4f} [{q.ece_after.low:.4f}, "
        f"{q.ece_after.high:.4f}], Brier {r.brier_before:.4f} -> {r.brier_after:.4f}, "
        f"AUC {r.auc_before:.4f} (unchanged)"
    ]

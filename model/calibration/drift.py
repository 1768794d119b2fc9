"""Drift maths: how far served scores have moved from the calibration set's (pure numpy).

The reference is a `ScoreProfile`: the calibration set's scores cut into about `N_QUANTILES`
equally filled bins, every cut a fine bin edge of the calibration's own binning, so the fractions
are exact counts and not estimates. Served images are summarised by a subsample of their pixels
binned on the same cuts (`summarise`); a window of such summaries is compared with the reference
by the population stability index (PSI), the distance credit-risk and MLOps monitoring use for
binned distributions, with its conventional cut-offs.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from numpy.typing import NDArray

from model.calibration.histogram import ScoreHistogram
from model.calibration.schema import ScoreProfile

DriftStatus = Literal["ok", "warn", "alert", "no_reference"]

# Twenty bins of 5% each: fine enough to see a shifted or inverted distribution, coarse enough
# that a few dozen images fill every bin.
N_QUANTILES = 20
# The PSI rule of thumb: below 0.1 the populations match, 0.1 to 0.25 is a moderate shift worth
# a look, above 0.25 a shift that invalidates what was calibrated.
PSI_WARN = 0.1
PSI_ALERT = 0.25
# Pixels sampled per served image: binning them costs tens of microseconds, and pixels of one
# image are so correlated that more would add little.
SAMPLE_PIXELS = 4096
# A float32 probability map holds nothing between 1 - 2**-24 and 1 while the calibration bins
# float64 sigmoids of logits there, so cuts above this would split pixels differently.
_MAX_PROBABILITY_EDGE = 1.0 - 2.0**-20
# Keeps the log in the PSI finite for a bin one side left empty.
_EPSILON = 1e-4


def score_profile(hist: ScoreHistogram, threshold: float) -> ScoreProfile:
    """The reference profile of a filled histogram, with its share of pixels >= `threshold`."""
    idx, pos, neg = hist.nonempty()
    total = (pos + neg).astype(np.float64)
    n = float(total.sum())
    cumulative = np.cumsum(total) / n
    quantiles = np.arange(1, N_QUANTILES) / N_QUANTILES
    # The first bin after each quantile is crossed starts a new profile bin.
    cuts = np.unique(np.searchsorted(cumulative, quantiles, side="left") + 1)
    cuts = cuts[cuts < len(idx)]
    edges = hist.fine.lower_edges(idx[cuts])
    if hist.is_probability:
        keep = edges <= _MAX_PROBABILITY_EDGE
        cuts, edges = cuts[keep], edges[keep]
    counts = np.add.reduceat(total, np.concatenate([[0], cuts]))
    lowest = hist.fine.lower_edges(idx)
    lowest[0] = hist.score_min  # as the report's thresholds do: the lowest edge may be -inf
    above = float(total[lowest >= threshold].sum())
    return ScoreProfile(
        edges=tuple(edges.tolist()),
        fractions=tuple((counts / n).tolist()),
        threshold=threshold,
        foreground_fraction=above / n,
    )


def sample(scores: NDArray[np.floating]) -> NDArray[np.floating]:
    """At most about SAMPLE_PIXELS pixels of a score map, spread over the whole image."""
    flat = scores.reshape(-1)
    stride = max(1, -(-flat.size // SAMPLE_PIXELS))
    # A stride that divides the width would sample the same columns in every row.
    if scores.ndim == 2 and stride > 1 and scores.shape[1] % stride == 0:
        stride += 1
    return flat[::stride]


def summarise(profile: ScoreProfile, pixels: NDArray[np.floating]) -> tuple[NDArray[np.int64], int]:
    """Counts of `pixels` in each profile bin, and how many are at or above its threshold."""
    edges = np.asarray(profile.edges, dtype=np.float64)
    bins = np.searchsorted(edges, pixels, side="right")
    counts = np.bincount(bins, minlength=len(edges) + 1).astype(np.int64)
    return counts, int(np.count_nonzero(pixels >= profile.threshold))


def psi(expected: NDArray[np.floating], observed: NDArray[np.floating]) -> float:
    """Population stability index of observed bin counts against expected bin fractions."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), _EPSILON)
    e /= e.sum()
    counts = np.asarray(observed, dtype=np.float64)
    o = np.maximum(counts / max(counts.sum(), 1.0), _EPSILON)
    o /= o.sum()
    return float(np.sum((o - e) * np.log(o / e)))


def status_of(distance: float) -> DriftStatus:
    """`ok`, `warn` or `alert` for a PSI, by the cut-offs PSI_WARN and PSI_ALERT."""
    if distance >= PSI_ALERT:
        return "alert"
    if distance >= PSI_WARN:
        return "warn"
    return "ok"

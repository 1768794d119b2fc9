"""How well a probability head's scores read as probabilities: Brier score, ECE, reliability table.

The Brier score comes from the stream's sum of ``(p - y)**2``: float32 scores are squared and summed
in float32 per chunk of 65536 pixels (pairwise, about 1e-7 relative) and the chunks in float64;
float64 scores and logits stay float64 throughout. ECE and the table come from the fine histogram
rather than a second pass: each fine bin counts toward the reliability bin holding
its midpoint, and its pixels' mean probability is taken as that midpoint. A fine bin is at most
``2**-14`` wide in ``p``, so the mean predicted probability of a row is off by at most ``2**-15``
and only pixels within ``2**-14`` of a row boundary can land in the neighbouring row.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from model.calibration.histogram import ScoreHistogram

N_RELIABILITY_BINS = 15


def calibration_quality(
    hist: ScoreHistogram, n_bins: int = N_RELIABILITY_BINS
) -> tuple[float, float, list[dict[str, Any]]]:
    """Brier score, expected calibration error over `n_bins` equal-width bins, and their table."""
    if not hist.is_probability:
        raise ValueError("calibration quality needs probability scores")
    idx, pos, neg = hist.nonempty()
    total = (pos + neg).astype(np.float64)
    mid = 0.5 * (hist.fine.lower_edges(idx) + hist.fine.upper_edges(idx))
    row = np.minimum((mid * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(row, weights=total, minlength=n_bins)
    positives = np.bincount(row, weights=pos.astype(np.float64), minlength=n_bins)
    predicted = np.bincount(row, weights=mid * total, minlength=n_bins)
    n = float(total.sum())
    table: list[dict[str, Any]] = []
    ece = 0.0
    for b in range(n_bins):
        c = float(count[b])
        mean_p = predicted[b] / c if c else None
        observed = positives[b] / c if c else None
        if mean_p is not None and observed is not None:
            ece += c / n * abs(mean_p - observed)
        table.append(
            {
                "lo": b / n_bins,
                "hi": (b + 1) / n_bins,
                "mean_predicted": None if mean_p is None else float(mean_p),
                "observed_frequency": None if observed is None else float(observed),
                "count": int(c),
            }
        )
    brier = hist.squared_error / hist.n_pixels
    return float(brier), float(ece), table

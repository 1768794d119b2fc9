"""Real calibration reports for store tests, with the threshold and AUC a test wants."""

from __future__ import annotations

import functools

import numpy as np

from model.calibration import CalibrationReport, ScoreHistogram, build_report


@functools.cache
def _built() -> CalibrationReport:
    """A report built from a small synthetic histogram (built once: it takes a moment)."""
    rng = np.random.default_rng(0)
    scores = rng.random((2, 48, 48)).astype(np.float32)
    hist = ScoreHistogram("probability")
    for image in scores:
        hist.update(image, image + rng.normal(0.0, 0.2, image.shape) > 0.5)
    return build_report(hist)


def report(threshold: float = 0.5, auc: float = 0.97) -> CalibrationReport:
    """A real report whose chosen threshold and AUC are the given ones."""
    return _built().model_copy(update={"threshold": threshold, "auc": auc})

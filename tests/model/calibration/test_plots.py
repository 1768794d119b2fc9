"""The ROC plot of a calibration report."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from PIL import Image

from model.calibration import CalibrationReport, Criterion, calibrate_arrays
from model.calibration.plots import roc_png


def report(scale: str = "probability", **options: Any) -> CalibrationReport:
    """A calibration report of noisy synthetic scores (AUC about 0.9)."""
    rng = np.random.default_rng(0)
    pairs = []
    for _ in range(3):
        mask = rng.random((48, 48)) < 0.3
        scores = np.where(mask, 0.65, 0.35) + rng.normal(0, 0.15, mask.shape)
        # A ReLU head's scores are unbounded, with many exact zeros.
        relu = np.maximum(scores * 4 - 1, 0)
        scores = np.clip(scores, 0, 1) if scale == "probability" else relu
        pairs.append((scores, mask))
    return calibrate_arrays(pairs, scale, Criterion(**options), n_bootstrap=20)


def decoded(png: bytes) -> np.ndarray:
    """The PNG's pixels as RGB."""
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


@pytest.mark.parametrize(
    ("scale", "options"),
    [
        ("probability", {"strategy": "youden"}),
        ("probability", {"strategy": "target_tpr", "target": 0.95}),
        ("unbounded", {"strategy": "f1"}),
    ],
)
def test_roc_png_is_a_png_with_the_marks(scale: str, options: dict[str, Any]) -> None:
    pixels = decoded(roc_png(report(scale, **options)))
    height, width, _ = pixels.shape
    assert width >= 600 and height >= 300
    # The chosen point is red (C3) and the 0.5 point green (C2): both must be drawn.
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 60) & (pixels[..., 2] < 60)
    green = (pixels[..., 1] > 130) & (pixels[..., 0] < 80) & (pixels[..., 2] < 80)
    assert red.sum() > 20 and green.sum() > 20


def test_roc_png_without_a_fixed_point() -> None:
    full = report()
    points = {name: p for name, p in full.operating_points.items() if name != "fixed_0.5"}
    plain = full.model_copy(update={"operating_points": points})
    assert decoded(roc_png(plain)).size > 0

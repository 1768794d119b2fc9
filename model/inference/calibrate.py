"""Calibrating a model: run it over a data set and read its threshold off the ROC curve."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from model.calibration import (
    GUARANTEE_STRATEGIES,
    CalibrationError,
    CalibrationReport,
    Criterion,
    ScoreHistogram,
    build_report,
)
from model.cards.sources import Predictor, load_predictor
from model.cards.sources.native import as_predictor, checkpoint_meta
from model.data.datasets import iter_pairs
from model.inference.predict import Prediction, predict
from model.network.heads import is_probability
from model.network.unet import UNet

# Heads whose output is exactly sigmoid(logit): binning the logit keeps the order of pixels
# that a float32 sigmoid rounds to 1.0. A hard sigmoid is not, so its output is binned.
_LOGIT_HEADS = ("sigmoid", "softmax")


def add_to_histogram(
    hist: ScoreHistogram, head: str, prediction: Prediction, mask: np.ndarray, name: str
) -> None:
    """Count one image's prediction against its mask."""
    if prediction.output.shape != mask.shape:
        raise CalibrationError(
            f"{name}: image is {prediction.output.shape[::-1]} px but its mask is "
            f"{mask.shape[::-1]} px (width, height); give them the same size"
        )
    if head in _LOGIT_HEADS:
        hist.update(prediction.logits, mask, logits=True)
    else:
        hist.update(prediction.output, mask)


def new_histogram(
    network: UNet | Predictor,
    n_bootstrap: int = 200,
    criterion: Criterion | None = None,
    recalibrate: str | None = None,
) -> ScoreHistogram:
    """An empty histogram for the scores of `network`'s head, with `n_bootstrap` replicates.

    It keeps per-image counts when `criterion` is a guaranteed strategy, which needs them, and a
    pixel sample when a `recalibrate` method is to be fitted.
    """
    head = as_predictor(network).head
    scale = "probability" if is_probability(head) else "unbounded"
    per_image = criterion is not None and criterion.strategy in GUARANTEE_STRATEGIES
    return ScoreHistogram(
        scale,
        n_bootstrap=n_bootstrap,
        per_image=per_image,
        sample_pixels=recalibrate is not None,
    )


def calibrate_model(
    network: UNet | Predictor,
    pairs: Iterable[tuple[str, np.ndarray, np.ndarray]],
    criterion: Criterion = Criterion(),
    reference_auc: float | None = None,
    recalibrate: str | None = None,
) -> CalibrationReport:
    """The calibration report of `network` on (name, image, mask) triples, in one pass.

    `reference_auc` is the model's known AUC, for the `auc_drop` warning; `recalibrate` fits
    that recalibration (temperature, platt, isotonic) and reports it.
    """
    predictor = as_predictor(network)
    hist = new_histogram(predictor, criterion=criterion, recalibrate=recalibrate)
    for name, image, mask in pairs:
        add_to_histogram(hist, predictor.head, predict(predictor, image), mask, name)
    return build_report(hist, criterion, reference_auc, recalibrate)


def calibrate_checkpoint(
    checkpoint: Path,
    data: Path,
    criterion: Criterion = Criterion(),
    progress: bool = False,
    recalibrate: str | None = None,
) -> CalibrationReport:
    """The calibration report of the model whose card (or checkpoint) is `checkpoint` on `data`."""
    predictor = load_predictor(checkpoint)
    pairs = iter_pairs(data, predictor.input, progress, desc="calibrate")
    meta = checkpoint_meta(predictor)
    reference = meta.reference_auc if meta is not None else None
    return calibrate_model(
        predictor, pairs, criterion, reference_auc=reference, recalibrate=recalibrate
    )

"""Evaluation: Dice, IoU and AUC at a threshold, plus what the activations did on the set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from model.calibration import build_report
from model.cards.sources import Predictor, load_predictor
from model.cards.sources.native import NativePredictor, as_predictor, checkpoint_meta
from model.data.datasets import iter_pairs
from model.inference.calibrate import add_to_histogram, new_histogram
from model.inference.predict import predict
from model.network.unet import UNet
from model.training.activation_stats import HeadStats, HiddenActivationStats


def dice_iou(tp: int, fp: int, fn: int) -> tuple[float, float]:
    """Dice and IoU from pixel counts (both 1.0 when there is nothing to find and nothing found)."""
    if tp + fp + fn == 0:
        return 1.0, 1.0
    return 2 * tp / (2 * tp + fp + fn), tp / (tp + fp + fn)


def evaluate_model(
    network: UNet | Predictor, pairs: Any, threshold: float, threshold_source: str = "given"
) -> dict[str, Any]:
    """Pixel Dice, IoU and AUC of `network` at `threshold` over (name, image, mask) triples."""
    predictor = as_predictor(network)
    hist = new_histogram(predictor, n_bootstrap=0)
    hidden = HiddenActivationStats()
    head = HeadStats(predictor.head)
    tp = fp = fn = 0
    per_image = []
    # Hidden activations are this package's U-Net's; other sources report none.
    watched = predictor.network if isinstance(predictor, NativePredictor) else nn.Module()
    with hidden.watch(watched):
        for name, image, mask in pairs:
            prediction = predict(predictor, image)
            add_to_histogram(hist, predictor.head, prediction, mask, name)
            output = prediction.output
            head.update(torch.from_numpy(output))
            predicted = output >= threshold
            image_tp = int((predicted & mask).sum())
            image_fp = int((predicted & ~mask).sum())
            image_fn = int((~predicted & mask).sum())
            tp, fp, fn = tp + image_tp, fp + image_fp, fn + image_fn
            per_image.append(dice_iou(image_tp, image_fp, image_fn)[0])
    dice, iou = dice_iou(tp, fp, fn)
    auc = build_report(hist).auc
    return {
        "dice": round(dice, 6),
        "iou": round(iou, 6),
        "auc": auc,
        "threshold": threshold,
        "threshold_source": threshold_source,
        "n_images": len(per_image),
        "dice_per_image_mean": round(float(np.mean(per_image)), 6) if per_image else None,
        "activations": {"hidden": hidden.summary(), "head": head.summary()},
    }


def evaluate_checkpoint(
    checkpoint: Path, data: Path, threshold: float | None = None, progress: bool = False
) -> dict[str, Any]:
    """Evaluate the model whose card (or checkpoint) is `checkpoint` on the data set at `data`."""
    predictor = load_predictor(checkpoint)
    source = "given"
    if threshold is None:
        card_threshold = predictor.card.threshold
        threshold = 0.5 if card_threshold is None else card_threshold
        source = "card default" if card_threshold is not None else "conventional 0.5"
        meta = checkpoint_meta(predictor)
        if meta is not None:
            recorded = meta.default_threshold
            source = "checkpoint default" if recorded else "conventional 0.5"
    pairs = iter_pairs(data, predictor.input, progress, desc="evaluate")
    return evaluate_model(predictor, pairs, threshold, source)

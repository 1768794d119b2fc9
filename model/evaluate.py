"""Evaluation: Dice, IoU and AUC at a threshold, plus what the activations did on the set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.activation_stats import HeadStats, HiddenActivationStats
from model.calibrate import add_to_histogram
from model.calibration import ScoreHistogram, build_report
from model.checkpoint import load_checkpoint
from model.datasets import iter_pairs
from model.heads import is_probability
from model.predict import predict
from model.unet import UNet


def dice_iou(tp: int, fp: int, fn: int) -> tuple[float, float]:
    """Dice and IoU from pixel counts (both 1.0 when there is nothing to find and nothing found)."""
    if tp + fp + fn == 0:
        return 1.0, 1.0
    return 2 * tp / (2 * tp + fp + fn), tp / (tp + fp + fn)


def evaluate_model(
    network: UNet, pairs: Any, threshold: float, threshold_source: str = "given"
) -> dict[str, Any]:
    """Pixel Dice, IoU and AUC of `network` at `threshold` over (name, image, mask) triples."""
    hist = ScoreHistogram(
        "probability" if is_probability(network.config.head) else "unbounded", n_bootstrap=0
    )
    hidden = HiddenActivationStats()
    head = HeadStats(network.config.head)
    tp = fp = fn = 0
    per_image = []
    with hidden.watch(network):
        for name, image, mask in pairs:
            prediction = predict(network, image)
            add_to_histogram(hist, network.config.head, prediction, mask, name)
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
    """Evaluate the checkpoint at `checkpoint` on the data set at `data`."""
    network, meta = load_checkpoint(checkpoint)
    source = "given"
    if threshold is None:
        threshold = meta.threshold
        source = "checkpoint default" if meta.default_threshold else "conventional 0.5"
    pairs = iter_pairs(data, network.config.in_channels, progress, desc="evaluate")
    return evaluate_model(network, pairs, threshold, source)

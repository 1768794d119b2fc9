"""The accuracy gate of a quantised model: does it still earn its thresholds?

Both models run on the same held-out images (none of them the quantiser's). The gate compares
pixel AUC, mean Dice at the model's own threshold, mean Dice at a threshold re-calibrated on each
model's own scores (the F1 optimum over the held-out pixels, as a calibration would pick it), and
reports how far the quantised outputs stray, max and mean |p_int8 - p_fp32|. It refuses when the
AUC or either Dice falls by more than MAX_LOSS.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_auc_score

from model.cards.sources import Predictor
from model.inference.predict import predict

MAX_LOSS = 0.005  # the largest fall in AUC or Dice the gate lets through


@dataclass(frozen=True)
class Figures:
    """One model's accuracy on the held-out images."""

    auc: float
    dice: float  # mean per-image Dice at the model's own threshold
    recalibrated_threshold: float
    dice_recalibrated: float  # mean per-image Dice at recalibrated_threshold


@dataclass(frozen=True)
class GateReport:
    """fp32 against int8 on the held-out images, and the verdict."""

    n_images: int
    threshold: float
    fp32: Figures
    int8: Figures
    max_abs_diff: float
    mean_abs_diff: float
    max_loss: float = MAX_LOSS

    @property
    def losses(self) -> dict[str, float]:
        """How much each gated figure fell from fp32 to int8 (negative: it rose)."""
        return {
            "auc": self.fp32.auc - self.int8.auc,
            "dice": self.fp32.dice - self.int8.dice,
            "dice_recalibrated": self.fp32.dice_recalibrated - self.int8.dice_recalibrated,
        }

    @property
    def passed(self) -> bool:
        """Whether no gated figure fell by more than `max_loss`."""
        return all(loss <= self.max_loss for loss in self.losses.values())

    def refusal(self) -> str:
        """One line saying which figures fell, by how much, and how to override."""
        falls = [
            f"{name} fell by {loss:.4f} "
            f"({getattr(self.fp32, name):.4f} -> {getattr(self.int8, name):.4f})"
            for name, loss in self.losses.items()
            if loss > self.max_loss
        ]
        return (
            f"the INT8 model loses accuracy on {self.n_images} held-out images: "
            f"{'; '.join(falls)} (more than {self.max_loss:g}); nothing written; pass "
            "--accept-loss to write it anyway, or quantise with more representative images"
        )

    def to_dict(self) -> dict[str, object]:
        """The figures and the verdict as JSON-ready values."""
        return asdict(self) | {"losses": self.losses, "passed": self.passed}


def evaluate_gate(
    fp32: Predictor, int8: Predictor, held_out: Sequence[tuple[np.ndarray, np.ndarray]]
) -> GateReport:
    """Run both models on `held_out` (image, mask) pairs and compare them."""
    threshold = 0.5 if fp32.card.threshold is None else float(fp32.card.threshold)
    reference = [predict(fp32, image).output for image, _ in held_out]
    quantized = [predict(int8, image).output for image, _ in held_out]
    masks = [mask for _, mask in held_out]
    gaps = np.concatenate(
        [np.abs(a - b).ravel() for a, b in zip(reference, quantized, strict=True)]
    )
    return GateReport(
        n_images=len(held_out),
        threshold=threshold,
        fp32=figures(reference, masks, threshold),
        int8=figures(quantized, masks, threshold),
        max_abs_diff=float(gaps.max()),
        mean_abs_diff=float(gaps.mean()),
    )


def figures(
    outputs: Sequence[np.ndarray], masks: Sequence[np.ndarray], threshold: float
) -> Figures:
    """AUC, Dice at `threshold` and Dice at the F1-optimal threshold of these outputs."""
    scores = np.concatenate([output.ravel() for output in outputs])
    truth = np.concatenate([mask.ravel() for mask in masks])
    auc = float(roc_auc_score(truth, scores)) if 0 < truth.sum() < truth.size else float("nan")
    precision, recall, cuts = precision_recall_curve(truth, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    best = float(cuts[int(np.argmax(f1[:-1]))]) if cuts.size else threshold
    return Figures(
        auc=auc,
        dice=mean_dice(outputs, masks, threshold),
        recalibrated_threshold=best,
        dice_recalibrated=mean_dice(outputs, masks, best),
    )


def mean_dice(
    outputs: Sequence[np.ndarray], masks: Sequence[np.ndarray], threshold: float
) -> float:
    """Mean per-image Dice of `outputs >= threshold` against `masks` (both empty: 1)."""
    values = []
    for output, mask in zip(outputs, masks, strict=True):
        predicted = output >= threshold
        total = int(predicted.sum()) + int(mask.sum())
        overlap = int(np.logical_and(predicted, mask).sum())
        values.append(1.0 if total == 0 else 2 * overlap / total)
    return float(np.mean(values))

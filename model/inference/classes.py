"""Multi-class models over a labelled set: the per-class calibration and the per-class evaluation.

The counterpart of `model.inference.calibrate` and `model.training.evaluate` for models whose card
says `multilabel` or `multiclass`: one pass over the images fills `ClassHistograms`; the rule's
Dice at given thresholds is counted exactly (`evaluate_classes`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from model.calibration import Criterion
from model.calibration.classes import ClassHistograms, build_class_report
from model.calibration.decision import argmax_labels, confusion, decide, dice_per_class
from model.calibration.schema import MultiClassReport
from model.cards.sources import Predictor, load_predictor
from model.cards.sources.native import checkpoint_meta
from model.data.classes import iter_class_pairs
from model.errors import UnknownClassError
from model.inference.predict import predict_classes
from model.network.heads import is_probability

# Heads whose class maps are exactly sigmoid(score): binning the score keeps the order of pixels
# a float32 sigmoid or softmax rounds to 1.0.
_LOGIT_HEADS = ("sigmoid", "softmax")


def new_class_histograms(predictor: Predictor, n_bootstrap: int = 200) -> ClassHistograms:
    """Empty per-class counts for a multi-class model's classes and head."""
    scale = "probability" if is_probability(predictor.head) else "unbounded"
    return ClassHistograms(predictor.classes, predictor.mode, scale, n_bootstrap=n_bootstrap)


def add_image(counts: ClassHistograms, predictor: Predictor, image: np.ndarray, target: Any) -> Any:
    """Predict one image and count it against its target; returns the prediction."""
    prediction = predict_classes(predictor, image)
    logits = prediction.logits if predictor.head in _LOGIT_HEADS else None
    counts.update(prediction.output, target, logits=logits)
    return prediction


def calibrate_classes(
    predictor: Predictor,
    items: Iterable[tuple[str, np.ndarray, np.ndarray]],
    criteria: Criterion | Mapping[str, Criterion] | None = None,
    reference_auc: Mapping[str, float] | None = None,
) -> MultiClassReport:
    """The per-class report of a multi-class model on (name, image, target) items, in one pass."""
    counts = new_class_histograms(predictor)
    for _, image, target in items:
        add_image(counts, predictor, image, target)
    return build_class_report(counts, criteria, reference_auc)


def calibrate_class_checkpoint(
    card: Path,
    data: Path,
    criteria: Criterion | Mapping[str, Criterion] | None = None,
    progress: bool = False,
) -> MultiClassReport:
    """The per-class report of the multi-class model whose card is `card`, on the set `data`."""
    predictor = load_predictor(card)
    items = iter_class_pairs(
        data, predictor.classes, predictor.mode, predictor.input, progress, "calibrate"
    )
    return calibrate_classes(predictor, items, criteria)


def default_thresholds(predictor: Predictor) -> tuple[dict[str, float], str]:
    """Each class's default threshold and where it comes from (checkpoint, card or 0.5)."""
    meta = checkpoint_meta(predictor)
    names = predictor.classes
    if meta is not None:
        recorded = (meta.default_threshold or {}).get("classes")
        if isinstance(recorded, dict) and set(recorded) == set(names):
            return {name: float(recorded[name]) for name in names}, "checkpoint default"
        if meta.default_threshold:
            return dict.fromkeys(names, meta.threshold), "checkpoint default"
        return dict.fromkeys(names, 0.5), "conventional 0.5"
    if predictor.card.threshold is not None:
        return dict.fromkeys(names, predictor.card.threshold), "card default"
    return dict.fromkeys(names, 0.5), "conventional 0.5"


def evaluate_classes(
    predictor: Predictor,
    items: Iterable[tuple[str, np.ndarray, np.ndarray]],
    thresholds: Mapping[str, float],
    threshold_source: str = "given",
) -> dict[str, Any]:
    """Per-class AUC; per-class and macro Dice at `thresholds` (exact), argmax and 0.5."""
    names = predictor.classes
    unknown = [name for name in thresholds if name not in names]
    if unknown or len(thresholds) != len(names):
        raise UnknownClassError(
            f"thresholds for {', '.join(thresholds) or 'no class'}; the model's classes are "
            f"{', '.join(names)}: give one threshold for each"
        )
    t = [float(thresholds[name]) for name in names]
    counts = new_class_histograms(predictor, n_bootstrap=0)
    k = len(names)
    rules = {"calibrated": np.zeros((k + 1, k + 1), dtype=np.int64)}
    per_class_at = {name: np.zeros(3, dtype=np.int64) for name in names}  # tp, fp, fn
    differ = n_images = 0
    for _, image, target in items:
        prediction = add_image(counts, predictor, image, target)
        if predictor.mode == "multiclass":
            labels = decide(prediction.output, t)
            differ += int((labels != argmax_labels(prediction.output)).sum())
            rules["calibrated"] += confusion(target, labels, k)
        else:
            for i, name in enumerate(names):
                picked, truth = prediction.output[i] >= t[i], np.asarray(target[i]) != 0
                per_class_at[name] += [
                    int((picked & truth).sum()),
                    int((picked & ~truth).sum()),
                    int((~picked & truth).sum()),
                ]
        n_images += 1
    report = build_class_report(counts)
    if predictor.mode == "multiclass":
        calibrated = dice_per_class(rules["calibrated"])
    else:
        calibrated = np.array(
            [2 * c[0] / max(2 * c[0] + c[1] + c[2], 1) for c in per_class_at.values()]
        )
    dice: dict[str, dict[str, Any]] = {
        "calibrated": {"per_class": dict(zip(names, calibrated.tolist(), strict=True))}
    }
    for rule, found in report.summary.dice.items():
        if rule != "calibrated":
            dice[rule] = {"per_class": found.per_class}
    for entry in dice.values():
        entry["macro"] = float(np.mean(list(entry["per_class"].values())))
    return {
        "mode": predictor.mode,
        "classes": list(names),
        "thresholds": dict(zip(names, t, strict=True)),
        "threshold_source": threshold_source,
        "auc": {name: r.auc for name, r in report.classes.items()},
        "dice": dice,
        "argmax_disagreement": differ / counts.n_pixels if predictor.mode == "multiclass" else None,
        "n_images": n_images,
    }


def evaluate_class_checkpoint(
    card: Path,
    data: Path,
    thresholds: Mapping[str, float] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate the multi-class model whose card is `card` on the set `data`."""
    predictor = load_predictor(card)
    if thresholds is None:
        thresholds, source = default_thresholds(predictor)
    else:
        source = "given"
    items = iter_class_pairs(
        data, predictor.classes, predictor.mode, predictor.input, progress, "evaluate"
    )
    return evaluate_classes(predictor, items, thresholds, source)

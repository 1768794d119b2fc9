"""Reproduce the shipped checkpoints in `model/weights/`: `python -m model.cli make-weights`.

Both binary models share data, seed and architecture and differ only in the output head. Each is
then calibrated on the validation set with the `f1` strategy (pixel F1 is Dice, the figure a
segmentation is judged by), and that threshold, with its evidence, becomes the checkpoint's
default. `calibrate_only` redoes that last step on the checkpoints already there.

`multiclass` (in `heads`) is `unet-multiclass`: the same architecture with a softmax over
background, nucleus and debris, trained with cross-entropy on the same images labelled by class
(`write_dataset(classes=...)`), each class's default threshold calibrated on its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from model.calibration import CalibrationReport, Criterion
from model.cards.checkpoint import checkpoint_paths
from model.data.synth import write_dataset
from model.inference.calibrate import calibrate_checkpoint
from model.inference.classes import calibrate_class_checkpoint
from model.network.unet import UNetConfig
from model.training.train import TrainConfig, train

WEIGHTS = Path(__file__).parents[1] / "weights"
# Per-image percentiles (csbdeep's 1 and 99.8): a 12- or 16-bit image that uses a small part of
# its range then looks to the network like its 8-bit rescaled copy, and a few hot pixels do not
# set the scale.
SHIPPED_NORMALIZE = {"method": "percentile", "low": 1.0, "high": 99.8}
TRAIN_SEED, VAL_SEED = 1, 2  # data seeds used here; never reuse them to report accuracy
# The parts of the validation report a checkpoint keeps with its default threshold.
DEFAULT_EVIDENCE = ("strategy", "auc", "n_images", "threshold_ci", "operating_points")
MULTICLASS = "multiclass"  # in `heads`: the multi-class model, unet-multiclass
SHIPPED_CLASSES = ("nucleus", "debris")


@dataclass(frozen=True)
class WeightsPlan:
    """What to train and calibrate; the defaults made the shipped checkpoints."""

    work: Path = Path("runs/weights")  # scratch folder for the generated data sets
    out: Path = WEIGHTS
    n_train: int = 384
    n_val: int = 64
    epochs: int = 12
    heads: tuple[str, ...] = ("sigmoid", "relu", "multiclass")
    criterion: Criterion = field(default_factory=lambda: Criterion("f1"))
    calibrate_only: bool = False


def make_weights(plan: WeightsPlan, progress: bool = True) -> dict[str, float]:
    """Generate the data, train each head, calibrate it; the default threshold of each model."""
    train_dir, val_dir = plan.work / "train", plan.work / "val"
    if any(head != MULTICLASS for head in plan.heads):
        if not plan.calibrate_only:
            write_dataset(train_dir, n=plan.n_train, seed=TRAIN_SEED, progress=progress)
        write_dataset(val_dir, n=plan.n_val, seed=VAL_SEED, progress=progress)
    thresholds: dict[str, float] = {}
    for head in plan.heads:
        if head == MULTICLASS:
            thresholds |= _make_multiclass(plan, progress)
            continue
        checkpoint = plan.out / f"unet-{head}.safetensors"
        if not plan.calibrate_only:
            architecture = UNetConfig(head=head, activation="relu", depth=3, base_channels=16)
            config = TrainConfig(epochs=plan.epochs, seed=0, normalize=SHIPPED_NORMALIZE)
            train(architecture, train_dir, checkpoint, config, val_dir, progress=progress)
        report = calibrate_checkpoint(checkpoint, val_dir, plan.criterion, progress=progress)
        _record_default_threshold(checkpoint, report)
        thresholds[checkpoint.stem] = report.threshold
    return thresholds


def _record_default_threshold(checkpoint: Path, report: CalibrationReport) -> None:
    """Store the validation-calibrated threshold and its evidence in the checkpoint's JSON."""
    _, json_path = checkpoint_paths(checkpoint)
    meta = json.loads(json_path.read_text())
    evidence = report.to_dict()
    meta["default_threshold"] = {
        "value": report.threshold,
        "source": f"{report.strategy} on the validation set (synthetic, seed {VAL_SEED})",
        **{key: evidence[key] for key in DEFAULT_EVIDENCE},
    }
    json_path.write_text(json.dumps(meta, indent=2) + "\n")


def _make_multiclass(plan: WeightsPlan, progress: bool) -> dict[str, float]:
    """Train and calibrate unet-multiclass; its per-class default thresholds, `name/class` keys."""
    train_dir, val_dir = plan.work / "train-classes", plan.work / "val-classes"
    if not plan.calibrate_only:
        write_dataset(
            train_dir, n=plan.n_train, seed=TRAIN_SEED, progress=progress, classes=SHIPPED_CLASSES
        )
    write_dataset(val_dir, n=plan.n_val, seed=VAL_SEED, progress=progress, classes=SHIPPED_CLASSES)
    checkpoint = plan.out / f"unet-{MULTICLASS}.safetensors"
    if not plan.calibrate_only:
        architecture = UNetConfig(
            head="softmax", out_channels=len(SHIPPED_CLASSES) + 1, depth=3, base_channels=16
        )
        config = TrainConfig(epochs=plan.epochs, seed=0, normalize=SHIPPED_NORMALIZE)
        train(
            architecture, train_dir, checkpoint, config, val_dir, progress, classes=SHIPPED_CLASSES
        )
    report = calibrate_class_checkpoint(checkpoint, val_dir, plan.criterion, progress=progress)
    _, json_path = checkpoint_paths(checkpoint)
    meta = json.loads(json_path.read_text())
    meta["default_threshold"] = {
        "classes": report.thresholds,
        "source": f"{plan.criterion.strategy} per class on the validation set (synthetic, "
        f"seed {VAL_SEED})",
        "n_images": report.n_images,
        "evidence": {
            name: {key: one.to_dict()[key] for key in DEFAULT_EVIDENCE}
            for name, one in report.classes.items()
        },
        "dice": report.summary.model_dump(mode="json")["dice"],
    }
    json_path.write_text(json.dumps(meta, indent=2) + "\n")
    return {f"{checkpoint.stem}/{name}": t for name, t in report.thresholds.items()}

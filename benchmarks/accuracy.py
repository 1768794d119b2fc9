"""The shipped sigmoid model against Otsu on unseen synthetic data; prints one JSON object.

A threshold is calibrated (by default with `f1`: pixel F1 is Dice) on one unseen set and applied
to another unseen set; Otsu thresholds each image of the second set on its own. Seeds 1 and 2
trained and validated the shipped models (model/training/make_weights.py); the defaults
here are unseen.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from model.calibration import Criterion
from model.data.datasets import iter_pairs
from model.data.synth import write_dataset
from model.inference.calibrate import calibrate_checkpoint
from model.training.evaluate import dice_iou, evaluate_checkpoint
from model.training.otsu import otsu_mask

WEIGHTS = Path(__file__).resolve().parents[1] / "model" / "weights"


def otsu_dice(data: Path) -> float:
    """Pixel Dice over the set when each image is cut at its own Otsu threshold."""
    tp = fp = fn = 0
    for _, image, mask in iter_pairs(data, channels=1):
        predicted = otsu_mask(image[0])
        tp += int((predicted & mask).sum())
        fp += int((predicted & ~mask).sum())
        fn += int((~predicted & mask).sum())
    return dice_iou(tp, fp, fn)[0]


def measure(
    checkpoint: Path,
    n: int,
    calibration_seed: int,
    test_seed: int,
    work: Path,
    strategy: str = "f1",
) -> dict[str, object]:
    """Calibrate on one unseen set, evaluate on another, and compare with Otsu and with 0.5."""
    calibration, test = work / "calibration", work / "test"
    write_dataset(calibration, n=n, seed=calibration_seed)
    write_dataset(test, n=n, seed=test_seed)
    report = calibrate_checkpoint(checkpoint, calibration, Criterion(strategy), progress=True)
    calibrated = evaluate_checkpoint(checkpoint, test, report.threshold, progress=True)
    fixed = evaluate_checkpoint(checkpoint, test, 0.5)
    return {
        "checkpoint": checkpoint.name,
        "n_images": n,
        "calibration_seed": calibration_seed,
        "test_seed": test_seed,
        "strategy": strategy,
        "calibrated_threshold": report.threshold,
        "calibration_auc": report.auc,
        "dice_calibrated": calibrated["dice"],
        "iou_calibrated": calibrated["iou"],
        "dice_at_0.5": fixed["dice"],
        "test_auc": calibrated["auc"],
        "dice_otsu": round(otsu_dice(test), 6),
    }


def main() -> None:
    """Print the figures the README quotes."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", type=Path, default=WEIGHTS / "unet-sigmoid.safetensors")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--calibration-seed", type=int, default=1001)
    parser.add_argument("--test-seed", type=int, default=1002)
    parser.add_argument("--strategy", default="f1")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        result = measure(
            args.checkpoint,
            args.n,
            args.calibration_seed,
            args.test_seed,
            Path(work),
            args.strategy,
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()

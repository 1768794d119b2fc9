"""Reproduce the shipped checkpoints in `model/weights/`: `python -m model.make_weights`.

Both models share data, seed and architecture and differ only in the output head. Each is then
calibrated on the validation set with the `f1` strategy (pixel F1 is Dice, the figure a
segmentation is judged by), and that threshold, with its evidence, becomes the checkpoint's
default. `--calibrate-only` redoes that last step on the checkpoints already there.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from model.calibrate import calibrate_checkpoint
from model.calibration import CalibrationReport, Criterion
from model.checkpoint import checkpoint_paths
from model.synth import write_dataset
from model.train import TrainConfig, train
from model.unet import UNetConfig

WEIGHTS = Path(__file__).parent / "weights"
TRAIN_SEED, VAL_SEED = 1, 2  # data seeds used here; never reuse them to report accuracy
# The parts of the validation report a checkpoint keeps with its default threshold.
DEFAULT_EVIDENCE = ("strategy", "auc", "n_images", "threshold_ci", "operating_points")


def main() -> None:
    """Generate the data, train both heads, calibrate them and write `model/weights/`."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, default=Path("runs/weights"), help="scratch folder")
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    parser.add_argument("--n-train", type=int, default=384)
    parser.add_argument("--n-val", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--heads", nargs="+", default=["sigmoid", "relu"])
    parser.add_argument("--strategy", default="f1", help="how the default threshold is chosen")
    parser.add_argument("--calibrate-only", action="store_true", help="keep the weights")
    args = parser.parse_args()

    train_dir, val_dir = args.work / "train", args.work / "val"
    if not args.calibrate_only:
        write_dataset(train_dir, n=args.n_train, seed=TRAIN_SEED, progress=True)
    write_dataset(val_dir, n=args.n_val, seed=VAL_SEED, progress=True)
    for head in args.heads:
        checkpoint = args.out / f"unet-{head}.safetensors"
        if not args.calibrate_only:
            architecture = UNetConfig(head=head, activation="relu", depth=3, base_channels=16)
            config = TrainConfig(epochs=args.epochs, seed=0)
            train(architecture, train_dir, checkpoint, config, val_dir)
        report = calibrate_checkpoint(checkpoint, val_dir, Criterion(args.strategy), progress=True)
        _record_default_threshold(checkpoint, report)
        print(f"unet-{head}: threshold {report.threshold:.4g} ({args.strategy})")


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


if __name__ == "__main__":
    main()

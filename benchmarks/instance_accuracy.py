"""Object accuracy of the instance step on synthetic nuclei with known objects (unseen seed).

    python benchmarks/instance_accuracy.py [--model model/weights/unet-sigmoid.json]
        [--n 24] [--size 256] [--seed 2027]

For each split (`none`, `watershed`), the shipped model's map cut at its own threshold is
labelled and matched against the generator's instance labels: object F1 at IoU 0.5, and the
count error (mean absolute and mean signed, objects an image). The same is done for the true
mask, to separate the split's errors from the model's. Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

if not __package__:  # run as `python benchmarks/instance_accuracy.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.cards.sources import load_predictor
from model.data.synth import generate_instances, pair_rng
from model.inference.instances import SPLITS, InstanceOptions, label_mask, match_objects
from model.inference.predict import predict


def measure(model: Path, n: int, size: int, seed: int) -> dict[str, Any]:
    """F1 at IoU 0.5 and count errors for every split, on the model's and on the true masks."""
    predictor = load_predictor(model)
    threshold = float(predictor.card.threshold if predictor.card.threshold is not None else 0.5)
    sums: dict[str, dict[str, list[float]]] = {}
    for i in range(n):
        image, mask, truth = generate_instances(pair_rng(seed, i), size)
        scores = predict(predictor, (image.astype(np.float32) / 255)[None]).output
        for source, foreground in (("model", scores >= threshold), ("true_mask", mask)):
            for split in SPLITS:
                labels = label_mask(foreground, InstanceOptions(split=split))  # type: ignore[arg-type]
                match = match_objects(truth, labels)
                entry = sums.setdefault(
                    f"{source}/{split}", {"tp": [], "fp": [], "fn": [], "d": []}
                )
                entry["tp"].append(match.true_positives)
                entry["fp"].append(match.false_positives)
                entry["fn"].append(match.false_negatives)
                entry["d"].append(int(labels.max(initial=0)) - int(truth.max(initial=0)))
    results = {}
    for key, entry in sums.items():
        tp, fp, fn = (int(np.sum(entry[k])) for k in ("tp", "fp", "fn"))
        counts = np.asarray(entry["d"], dtype=float)
        results[key] = {
            "f1_iou50": round(2 * tp / max(2 * tp + fp + fn, 1), 4),
            "true_positives": tp,
            "false_positives": fp,
            "false_negatives": fn,
            "count_error_mean_abs": round(float(np.abs(counts).mean()), 2),
            "count_error_mean": round(float(counts.mean()), 2),
        }
    return {
        "model": str(model),
        "threshold": threshold,
        "images": n,
        "size": size,
        "seed": seed,
        "results": results,
    }


def figure(model: Path, size: int, seed: int, out: Path) -> None:
    """One unseen image's objects: the true nuclei, then `none` and `watershed` on the model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.color import label2rgb

    predictor = load_predictor(model)
    threshold = float(predictor.card.threshold if predictor.card.threshold is not None else 0.5)
    image, _, truth = generate_instances(pair_rng(seed, 0), size)
    scores = predict(predictor, (image.astype(np.float32) / 255)[None]).output
    panels = [("true nuclei", truth)]
    for split in SPLITS:
        labels = label_mask(scores >= threshold, InstanceOptions(split=split))  # type: ignore[arg-type]
        f1 = match_objects(truth, labels).f1
        panels.append((f"split={split}: {labels.max()} objects, F1 {f1:.2f}", labels))
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.3))
    for axis, (title, labels) in zip(axes, panels, strict=True):
        shown = label2rgb(labels, image=image / 255, bg_label=0, alpha=0.35, image_alpha=1)
        axis.imshow(shown)
        axis.set_title(title if labels is not truth else f"{title}: {labels.max()}", fontsize=10)
        axis.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=80)


def main() -> None:
    """Parse the options, measure, print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=Path("model/weights/unet-sigmoid.json"))
    parser.add_argument("--n", type=int, default=24)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=2027)
    parser.add_argument("--figure", type=Path, help="also draw the first image's objects here")
    args = parser.parse_args()
    if args.figure:
        figure(args.model, args.size, args.seed, args.figure)
    print(json.dumps(measure(args.model, args.n, args.size, args.seed), indent=2))


if __name__ == "__main__":
    main()

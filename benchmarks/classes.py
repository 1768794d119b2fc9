"""Per-class calibration of the shipped unet-multiclass: K = 2 against K = 1 on the same images.

    python benchmarks/classes.py [--images 24] [--side 256] [--rounds 3] [--figure FILE.png]

On the same synthetic images (seed 9301, unseen in training and the shipped calibration), in
interleaved rounds:

* K = 1: each image's nucleus map (`predict`) counted into one `ScoreHistogram`, then its report;
* K = 2: each image's two class maps (`predict_classes`) counted into `ClassHistograms` (one pass,
  one histogram per class), then the per-class report with the summary;

once with the forward pass included (what a calibration costs) and once on precomputed maps (the
counting alone). Memory: the peak traced allocation of the K = 2 counting over N and 3N images
generated one at a time, which stays flat when memory does not grow with the number of images.
With `--figure`, writes each class's ROC with its chosen and its 0.5 operating points.

Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.calibration import MultiClassReport, build_class_report, build_report
from model.cards.sources import load_predictor
from model.data.normalize import normalize
from model.data.synth import generate_labelled, pair_rng
from model.inference.calibrate import add_to_histogram, new_histogram
from model.inference.classes import new_class_histograms
from model.inference.predict import predict, predict_classes

WEIGHTS = Path(__file__).resolve().parent.parent / "model" / "weights" / "unet-multiclass.json"
SEED = 9301


def _images(predictor: Any, n: int, side: int) -> list[tuple[np.ndarray, np.ndarray]]:
    items = []
    for i in range(n):
        image, labels = generate_labelled(pair_rng(SEED, i), side)
        items.append((normalize(image[None] / np.float32(255), predictor.input.normalize), labels))
    return items


def _k1(predictor: Any, items: list[tuple[np.ndarray, np.ndarray]], maps: list | None) -> Any:
    hist = new_histogram(predictor)
    for i, (image, labels) in enumerate(items):
        prediction = maps[i][0] if maps else predict(predictor, image)
        add_to_histogram(hist, predictor.head, prediction, labels == 1, str(i))
    return build_report(hist)


def _k2(predictor: Any, items: list[tuple[np.ndarray, np.ndarray]], maps: list | None) -> Any:
    counts = new_class_histograms(predictor)
    for i, (image, labels) in enumerate(items):
        prediction = maps[i][1] if maps else predict_classes(predictor, image)
        counts.update(prediction.output, labels, logits=prediction.logits)
    return build_class_report(counts)


def _timed(work: Callable[[], Any]) -> tuple[float, Any]:
    began = time.perf_counter()
    result = work()
    return time.perf_counter() - began, result


def _peak_mib(predictor: Any, n: int, side: int) -> float:
    """Peak traced memory of counting n images generated one at a time (K = 2, maps only)."""
    counts = new_class_histograms(predictor, n_bootstrap=200)
    tracemalloc.start()
    for i in range(n):
        image, labels = generate_labelled(pair_rng(SEED + 1, i), side)
        x = normalize(image[None] / np.float32(255), predictor.input.normalize)
        prediction = predict_classes(predictor, x)
        counts.update(prediction.output, labels, logits=prediction.logits)
        del image, labels, x, prediction
    build_class_report(counts)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def _figure(report: MultiClassReport, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.2, 4.6), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    colours = {"nucleus": "#e69f00", "debris": "#56b4e9"}
    for name, each in report.classes.items():
        colour = colours.get(name, "#009e73")
        axes.plot(each.roc.fpr, each.roc.tpr, color=colour, label=f"{name} (AUC {each.auc:.3f})")
        chosen = each.operating_points[each.strategy]
        fixed = each.operating_points["fixed_0.5"]
        axes.plot(
            chosen.fpr,
            chosen.tpr,
            "o",
            color=colour,
            markeredgecolor="black",
            label=f"{name}: {each.strategy} at {chosen.threshold:.3f}",
        )
        axes.plot(
            fixed.fpr,
            fixed.tpr,
            "s",
            color="white",
            markeredgecolor=colour,
            label=f"{name}: 0.5 cut",
        )
    axes.set_xscale("symlog", linthresh=0.01)
    axes.set_xlim(0, 1)
    axes.set_ylim(0.5, 1.0)
    axes.set_xlabel("false positive rate (symlog)")
    axes.set_ylabel("true positive rate")
    axes.set_title("unet-multiclass: one ROC and one threshold per class")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path)


def main() -> None:
    """Run the comparison and print the figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--figure", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    predictor = load_predictor(WEIGHTS)
    items = _images(predictor, args.images, args.side)
    maps = [(predict(predictor, x), predict_classes(predictor, x)) for x, _ in items]
    times: dict[str, list[float]] = {"k1": [], "k2": [], "k1_counting": [], "k2_counting": []}
    report = None
    for _ in range(args.rounds):  # interleaved: a loaded machine slows both alike
        times["k1"].append(_timed(lambda: _k1(predictor, items, None))[0])
        spent, report = _timed(lambda: _k2(predictor, items, None))
        times["k2"].append(spent)
        times["k1_counting"].append(_timed(lambda: _k1(predictor, items, maps))[0])
        times["k2_counting"].append(_timed(lambda: _k2(predictor, items, maps))[0])
    best = {key: min(values) for key, values in times.items()}
    n = max(4, args.images // 3)
    peaks = {
        "n": n,
        "peak_mib_n": _peak_mib(predictor, n, args.side),
        "peak_mib_3n": _peak_mib(predictor, 3 * n, args.side),
    }
    if args.figure and report is not None:
        _figure(report, args.figure)
    print(
        json.dumps(
            {
                "images": args.images,
                "side": args.side,
                "rounds": args.rounds,
                "best_s": best,
                "ratio_k2_over_k1": best["k2"] / best["k1"],
                "ratio_counting_k2_over_k1": best["k2_counting"] / best["k1_counting"],
                "memory": peaks,
                "auc": {name: r.auc for name, r in report.classes.items()} if report else None,
                "machine": platform.processor() or platform.machine(),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()

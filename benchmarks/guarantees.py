"""Do the guaranteed strategies keep their promise on data they did not see?

    python benchmarks/guarantees.py [--images 400] [--size 64] [--splits 1000] [--plot PATH]

Three sources of per-image scores, each scored once: synthetic sigmoid score maps (faint objects,
unlabelled debris; no network) and the shipped `unet-relu` and `unet-sigmoid` models on a synthetic
data set the training never saw. Each image's coarse histogram is kept (the calibration pass's
per-image counts), so a random calibration/test split costs only a mean over rows. For every split
(half calibration, half test):

* `fnr_control` at alpha: the threshold from the calibration half, and the realised mean per-image
  FNR on the test half. Conformal risk control promises E[test FNR] <= alpha, and the bound is
  tight: the mean over splits should sit just below alpha.
* `fdr_control` at alpha, delta (Learn-then-Test, fixed sequence): the realised mean per-image FDR
  on the test half; the promise is P(test risk > alpha) <= delta over calibration sets.

Prints one JSON object on stdout; with --plot, writes the histograms of the realised risks.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.calibration import synthetic_image
from model.calibration import ScoreHistogram
from model.calibration.conformal import (
    ImageCurves,
    choose_fdr,
    crc_index,
    fdr_losses,
    fnr_losses,
    image_curves,
)
from model.cards.sources import load_predictor
from model.data.datasets import iter_pairs
from model.data.synth import write_dataset
from model.errors import GuaranteeError
from model.inference.predict import predict

WEIGHTS = Path(__file__).resolve().parent.parent / "model" / "weights"
DATA_SEED = 31  # neither the training (1) nor the validation (2) seed of the shipped weights


def _curves(hist: ScoreHistogram) -> ImageCurves:
    assert hist.per_image is not None
    pos, neg = hist.per_image.matrix()
    edges = hist.coarse.lower_edges(np.arange(pos.shape[1]))
    return image_curves(pos, neg, edges, float(np.nextafter(hist.score_max, np.inf)))


def synthetic_scores(n: int, size: int, seed: int) -> ImageCurves:
    """Per-image curves of synthetic sigmoid score maps."""
    rng = np.random.default_rng(seed)
    hist = ScoreHistogram("probability", n_bootstrap=0, per_image=True)
    for _ in range(n):
        scores, mask = synthetic_image(rng, size)
        hist.update(scores, mask)
    return _curves(hist)


def model_scores(name: str, data: Path) -> ImageCurves:
    """Per-image curves of a shipped model on the data set at `data`, each image scored once."""
    predictor = load_predictor(WEIGHTS / f"{name}.json")
    scale = "unbounded" if predictor.head in ("relu", "identity") else "probability"
    hist = ScoreHistogram(scale, n_bootstrap=0, per_image=True)
    for _, image, mask in iter_pairs(data, predictor.input):
        prediction = predict(predictor, image)
        if scale == "probability":
            hist.update(prediction.logits, mask, logits=True)
        else:
            hist.update(prediction.output, mask)
    return _curves(hist)


def splits(
    curves: ImageCurves, n_splits: int, alpha: float, fdr_alpha: float, delta: float, seed: int
) -> dict[str, Any]:
    """Realised test risks of both strategies over random half/half splits."""
    fnr, n_empty = fnr_losses(curves)
    has_fg = np.flatnonzero(curves.n_pos > 0)
    fdr = fdr_losses(curves)
    rng = np.random.default_rng(seed)
    n = len(curves.tp)
    test_fnr: list[float] = []
    test_fdr: list[float] = []
    abstained = 0
    index = {float(t): k for k, t in enumerate(curves.thresholds)}
    # FNR rows are the images with foreground: map image numbers to rows.
    row_of = np.full(n, -1)
    row_of[has_fg] = np.arange(len(has_fg))
    for _ in range(n_splits):
        order = rng.permutation(n)
        cal, test = order[: n // 2], order[n // 2 :]
        cal_rows, test_rows = row_of[cal], row_of[test]
        k = crc_index(fnr[cal_rows[cal_rows >= 0]], alpha)
        if k is None:
            raise SystemExit("too few images for fnr_control at this alpha")
        test_fnr.append(float(fnr[test_rows[test_rows >= 0], k].mean()))
        sub = ImageCurves(curves.thresholds, curves.tp[cal], curves.fp[cal])
        try:
            threshold, _ = choose_fdr(sub, fdr_alpha, delta)
        except GuaranteeError:
            abstained += 1
            continue
        test_fdr.append(float(fdr[test, index[threshold]].mean()))
    fnr_arr = np.array(test_fnr)
    fdr_arr = np.array(test_fdr)
    return {
        "n_images": n,
        "n_empty_truth": n_empty,
        "fnr_control": {
            "alpha": alpha,
            "mean_test_fnr": float(fnr_arr.mean()),
            "sd_test_fnr": float(fnr_arr.std()),
            "share_above_alpha": float(np.mean(fnr_arr > alpha)),
            "holds": bool(fnr_arr.mean() <= alpha),
            "tight_within_0.02": bool(alpha - fnr_arr.mean() <= 0.02),
        },
        "fdr_control": {
            "alpha": fdr_alpha,
            "delta": delta,
            "splits_certified": len(fdr_arr),
            "splits_abstained": abstained,
            "mean_test_fdr": float(fdr_arr.mean()) if len(fdr_arr) else None,
            "share_above_alpha": float(np.mean(fdr_arr > fdr_alpha)) if len(fdr_arr) else None,
            "holds": bool(len(fdr_arr) and np.mean(fdr_arr > fdr_alpha) <= delta),
        },
        "_fnr": fnr_arr,
        "_fdr": fdr_arr,
    }


def plot(results: dict[str, dict[str, Any]], path: Path, alpha: float, fdr_alpha: float) -> None:
    """Histograms of the realised test FNR and FDR per source, alpha marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, result in results.items():
        axes[0].hist(result["_fnr"], bins=40, alpha=0.55, label=name)
        if len(result["_fdr"]):
            axes[1].hist(result["_fdr"], bins=40, alpha=0.55, label=name)
    axes[0].axvline(alpha, color="k", ls="--", label=f"alpha = {alpha:g}")
    axes[1].axvline(fdr_alpha, color="k", ls="--", label=f"alpha = {fdr_alpha:g}")
    axes[0].set(title="fnr_control: realised test FNR per split", xlabel="mean per-image FNR")
    axes[1].set(title="fdr_control: realised test FDR per split", xlabel="mean per-image FDR")
    for ax in axes:
        ax.set_ylabel("splits")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    """Score each source once, run the splits and print the figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--splits", type=int, default=1000)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--fdr-alpha", type=float, default=0.2)
    parser.add_argument("--delta", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()

    started = time.perf_counter()
    sources: dict[str, ImageCurves] = {}
    print("scoring synthetic score maps", file=sys.stderr)
    sources["synthetic scores"] = synthetic_scores(args.images, args.size, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        write_dataset(data, n=args.images, seed=DATA_SEED, size=args.size)
        for name in ("unet-relu", "unet-sigmoid"):
            print(f"scoring {name}", file=sys.stderr)
            sources[name] = model_scores(name, data)
    scored = time.perf_counter() - started

    results = {
        name: splits(curves, args.splits, args.alpha, args.fdr_alpha, args.delta, args.seed)
        for name, curves in sources.items()
    }
    if args.plot:
        plot(results, args.plot, args.alpha, args.fdr_alpha)
    out = {
        "images": args.images,
        "size": args.size,
        "splits": args.splits,
        "calibration_images_per_split": args.images // 2,
        "seconds_scoring": round(scored, 1),
        "seconds_total": round(time.perf_counter() - started, 1),
        "python": platform.python_version(),
        "sources": {
            name: {k: v for k, v in r.items() if not k.startswith("_")}
            for name, r in results.items()
        },
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

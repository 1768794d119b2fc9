"""Streaming calibration engine against scikit-learn's `roc_curve` on the raw pixels.

    python benchmarks/calibration.py [--pixels 1e8] [--image-side 1000] [--seed 0]

Generates sigmoid score maps (float32, many pixels exactly 1.0 and many near 0) with ambiguous
labels, then in one run measures:

* the engine (`ScoreHistogram.update` per image + `build_report`): wall and CPU time (best of
  `--repeats`) and peak traced memory above what was allocated before it started (the inputs);
* `sklearn.metrics.roc_curve` on the flattened raw arrays: the same figures (wall time: the better
  of one run without and one with tracemalloc; CPU time: the run without);
* the difference in AUC, and Youden's J on the raw pixels at the engine's threshold against the
  raw optimum;
* peak memory of calibrating N and 6N images of 256 x 256, generated one at a time.

Prints one JSON object on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import sklearn
from numpy.typing import NDArray
from sklearn.metrics import auc as area_under
from sklearn.metrics import roc_curve
from tqdm import tqdm

from model.calibration import CalibrationReport, Criterion, ScoreHistogram, build_report


def synthetic_image(
    rng: np.random.Generator, side: int
) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """A float32 sigmoid score map and its mask: faint objects, bright debris, noisy labels."""
    yy, xx = np.ogrid[:side, :side]
    mask = np.zeros((side, side), dtype=bool)
    logit = np.full((side, side), -7.0, dtype=np.float32)
    for _ in range(int(rng.integers(4, 12))):
        cy, cx = rng.uniform(0, side, 2)
        r = rng.uniform(0.03, 0.12) * side
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        mask |= disc
        logit[disc] = rng.choice([7.0, 2.0])  # some objects are faint
    for _ in range(int(rng.integers(1, 5))):
        cy, cx = rng.uniform(0, side, 2)
        r = rng.uniform(0.01, 0.05) * side
        logit[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 3.0  # debris: bright, not labelled
    noise = rng.standard_normal((side, side), dtype=np.float32)
    logit += np.float32(4.0) * noise
    # The network's float32 sigmoid: exactly 1.0 above a logit of about 16.6.
    scores = np.float32(1.0) / (np.float32(1.0) + np.exp(-logit))
    return scores.astype(np.float32), mask


def _traced(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """Run `fn` under tracemalloc: its result, wall seconds and peak MB above the start."""
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return out, seconds, peak / 2**20


def _engine(scores: NDArray[np.float32], masks: NDArray[np.bool_], side: int) -> CalibrationReport:
    hist = ScoreHistogram("probability")
    for s, m in zip(tqdm(scores, desc="engine", file=sys.stderr), masks, strict=True):
        hist.update(s.reshape(side, side), m.reshape(side, side))
    return build_report(hist, Criterion("youden"))


def _scaling(n_images: int, side: int, seed: int) -> float:
    """Peak traced MB while calibrating `n_images` generated one at a time."""

    def run() -> CalibrationReport:
        rng = np.random.default_rng(seed)
        hist = ScoreHistogram("probability")
        for _ in tqdm(range(n_images), desc=f"{n_images} images", file=sys.stderr):
            s, m = synthetic_image(rng, side)
            hist.update(s, m)
        return build_report(hist)

    return _traced(run)[2]


def _compare(n_pixels: float, side: int, seed: int, repeats: int) -> dict[str, Any]:
    """Engine against raw `roc_curve` on the same generated pixels."""
    n_images = max(1, round(n_pixels / side**2))
    rng = np.random.default_rng(seed)
    scores = np.empty((n_images, side * side), dtype=np.float32)
    masks = np.empty((n_images, side * side), dtype=bool)
    for i in tqdm(range(n_images), desc="generate", file=sys.stderr):
        s, m = synthetic_image(rng, side)
        scores[i], masks[i] = s.ravel(), m.ravel()
    flat_s, flat_y = scores.reshape(-1), masks.reshape(-1)
    n = flat_s.size

    report, _, mem_engine = _traced(lambda: _engine(scores, masks, side))
    engine_times, engine_cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        _engine(scores, masks, side)
        engine_times.append(time.perf_counter() - t0)
        engine_cpu.append(time.process_time() - c0)

    print("sklearn roc_curve on the raw pixels (twice) ...", file=sys.stderr)
    t0, c0 = time.perf_counter(), time.process_time()
    roc_curve(flat_y, flat_s)
    raw_untraced = time.perf_counter() - t0
    raw_cpu = time.process_time() - c0
    (fpr, tpr, thr), raw_traced, mem_raw = _traced(lambda: roc_curve(flat_y, flat_s))
    raw_seconds = min(raw_untraced, raw_traced)
    auc_raw = float(area_under(fpr, tpr))
    j = tpr - fpr
    best = int(np.argmax(j))

    t = report.threshold
    selected = flat_s >= t
    n_pos = int(np.count_nonzero(flat_y))
    tp = int(np.count_nonzero(selected & flat_y))
    fp = int(np.count_nonzero(selected)) - tp
    j_at_ours = tp / n_pos - fp / (n - n_pos)
    engine_seconds = min(engine_times)
    return {
        "pixels": n,
        "images": n_images,
        "image_side": side,
        "fraction_exactly_1": float(np.count_nonzero(flat_s == 1.0) / n),
        "fraction_below_1e-6": float(np.count_nonzero(flat_s < 1e-6) / n),
        "engine_seconds": round(engine_seconds, 3),
        "engine_seconds_all": [round(x, 3) for x in engine_times],
        "engine_peak_extra_mb": round(mem_engine, 1),
        "sklearn_roc_curve_seconds": round(raw_seconds, 3),
        "sklearn_roc_curve_seconds_all": [round(raw_untraced, 3), round(raw_traced, 3)],
        "sklearn_roc_curve_peak_extra_mb": round(mem_raw, 1),
        "speedup": round(raw_seconds / engine_seconds, 1),
        # CPU seconds of this process: less sensitive to other jobs on a shared machine.
        "engine_cpu_seconds": round(min(engine_cpu), 3),
        "sklearn_roc_curve_cpu_seconds": round(raw_cpu, 3),
        "speedup_cpu": round(raw_cpu / min(engine_cpu), 1),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "auc_engine": report.auc,
        "auc_raw": auc_raw,
        "auc_abs_diff": abs(report.auc - auc_raw),
        "threshold_engine": t,
        "threshold_raw_youden": float(thr[best]),
        "threshold_abs_diff": abs(t - float(thr[best])),
        "youden_j_raw_optimum": float(j[best]),
        "youden_j_raw_at_engine_threshold": j_at_ours,
        "youden_j_abs_diff": abs(float(j[best]) - j_at_ours),
        "threshold_ci": report.to_dict()["threshold_ci"],
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its JSON object."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--pixels", type=float, default=1e8)
    ap.add_argument("--image-side", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="timed engine runs (the best counts)")
    ap.add_argument("--scaling-images", type=int, default=300, help="N; 6N is run too (0: skip)")
    args = ap.parse_args(argv)

    result = _compare(args.pixels, args.image_side, args.seed, args.repeats)
    if args.scaling_images:
        small = _scaling(args.scaling_images, 256, args.seed)
        large = _scaling(6 * args.scaling_images, 256, args.seed)
        result["memory_scaling_256px"] = {
            "images": [args.scaling_images, 6 * args.scaling_images],
            "peak_mb": [round(small, 1), round(large, 1)],
            "ratio": round(large / small, 3),
        }
    result["machine"] = {
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scikit_learn": sklearn.__version__,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

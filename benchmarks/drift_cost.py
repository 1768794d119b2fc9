"""What drift watching costs per served image, against the forward pass it follows.

    python -m benchmarks.drift_cost [--side 256] [--images 200]

Calibrates the shipped sigmoid model on synthetic images, then times, in this process and on
one thread, the work the inference worker adds per image once a calibration is active (sample
the map, bin it on the score profile, slide the window, PSI, publish the gauges) and the forward
pass of the same images. Thread CPU time, not wall time, so that a busy shared machine moves
both figures alike. Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from model.calibration import Criterion
from model.cards.checkpoint import load_checkpoint
from model.data.synth import generate_pair, pair_rng
from model.inference.calibrate import calibrate_model
from model.inference.predict import predict
from service.inference.drift import DriftMonitor
from service.ops.metrics import Metrics
from service.settings import Settings
from service.state.drift_windows import DriftWindows
from service.state.records import JobParams
from service.state.store import ThresholdStore

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT = ROOT / "model" / "weights" / "unet-sigmoid.safetensors"


def images(side: int, n: int, seed: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, image, mask) of `n` synthetic images."""
    out = []
    for i in range(n):
        image, mask = generate_pair(pair_rng(seed, i), side)
        out.append((f"{i}", (image.astype(np.float32) / 255.0)[None], mask))
    return out


def main() -> None:
    """Run the measurement and print its JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--images", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    network, _ = load_checkpoint(CHECKPOINT)
    served = images(args.side, 16, seed=5)
    predictions = [predict(network, image) for _, image, _ in served]

    forward_s = time.thread_time()
    for _, image, _ in served:
        predict(network, image)
    forward_s = (time.thread_time() - forward_s) / len(served)

    report = calibrate_model(network, images(args.side, 8, seed=4), Criterion())
    with tempfile.TemporaryDirectory() as tmp:
        store = ThresholdStore(Path(tmp) / "thresholds.sqlite3")
        calibration_id = store.jobs.new_calibration("m", "d", "f1", None, JobParams(), True).id
        store.jobs.finish_calibration(calibration_id, report)
        windows = DriftWindows(store.path)
        monitor = DriftMonitor(store, windows, Settings(state_dir=Path(tmp)), Metrics())
        observe = monitor.watch("m", calibration_id)
        for prediction in predictions:  # warm
            observe(prediction)
        drift_s = time.thread_time()
        for i in range(args.images):
            observe(predictions[i % len(predictions)])
        drift_s = (time.thread_time() - drift_s) / args.images
        status = monitor.report("m", calibration_id)
        windows.close()
        store.close()

    print(
        json.dumps(
            {
                "image_side": args.side,
                "images_observed": args.images,
                "drift_us_per_image": drift_s * 1e6,
                "forward_ms_per_image_one_thread": forward_s * 1e3,
                "drift_fraction_of_forward": drift_s / forward_s,
                "status_after": status.status,
                "platform": platform.platform(),
                "torch": torch.__version__,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

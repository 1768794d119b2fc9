"""The shipped model in torch and in onnxruntime, in-process and served, on the same images.

    python -m benchmarks.backends [--side 256] [--images 64] [--seconds 20] [--concurrency 1 4]

In one run: the shipped sigmoid U-Net is exported to ONNX (`unet export`), then
* in-process: images/s of single-image passes, one at a time, with one thread and with every
  core, through the same predictor interface the service uses (torch: the native checkpoint;
  onnxruntime: the export, its session given the same thread count);
* served: a uvicorn subprocess serving both models from one folder, driven with PNG uploads to
  `POST /v1/models/{name}/mask` at each concurrency level.
Both run on the CPU (onnxruntime's CPU provider). Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.launch import log, server
from benchmarks.load import drive
from benchmarks.serve import synthetic_pngs
from model.cards.export import export
from model.cards.sources import Predictor, load_predictor
from model.cards.sources.onnx import OnnxPredictor
from model.data.decoding import image_from_bytes
from model.inference.predict import predict
from service.inference.plan import usable_cores

SHIPPED = Path(__file__).resolve().parents[1] / "model" / "weights" / "unet-sigmoid.json"


def in_process(predictor: Predictor, images: list[np.ndarray], seconds: float) -> dict[str, Any]:
    """Images per second and mean ms of single-image passes, back to back."""
    predict(predictor, images[0])  # warm-up
    done, started = 0, time.perf_counter()
    while done < len(images) and time.perf_counter() - started < seconds:
        predict(predictor, images[done])
        done += 1
    wall = time.perf_counter() - started
    return {"images": done, "images_per_s": done / wall, "mean_ms": 1000 * wall / done}


def main() -> None:
    """Print the comparison as one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    result: dict[str, Any] = {
        "side": args.side,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
    }
    pngs = synthetic_pngs(args.side, args.images)
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work) / "models"
        folder.mkdir()
        shutil.copy(SHIPPED, folder / "torch.json")
        shutil.copy(SHIPPED.with_suffix(".safetensors"), folder / "torch.safetensors")
        export(folder / "torch.json", "onnx", folder / "onnx.onnx")
        import onnxruntime

        result["onnxruntime"] = onnxruntime.__version__
        cores = usable_cores()
        for threads in sorted({1, cores}):
            torch.set_num_threads(threads)
            for name in ("torch", "onnx"):
                predictor = load_predictor(folder / f"{name}.json")
                if isinstance(predictor, OnnxPredictor):  # the same thread budget as torch's
                    options = onnxruntime.SessionOptions()
                    options.intra_op_num_threads = threads
                    path = str(folder / "onnx.onnx")
                    predictor.session = onnxruntime.InferenceSession(path, options)
                images = [image_from_bytes(png, predictor.input) for png in pngs]
                figures = in_process(predictor, images, args.seconds)
                log(f"in-process {name}, {threads} thread(s): {figures['images_per_s']:.1f}/s")
                result[f"in_process_{name}_{threads}_threads"] = figures
        env = {"UNET_MODEL_DIR": str(folder), "UNET_STATE_DIR": str(Path(work) / "state")}
        with server(env, Path(work)) as (url, _):
            for name in ("torch", "onnx"):
                levels = {}
                for concurrency in args.concurrency:
                    asyncio.run(drive(url, name, pngs, concurrency, 2 * concurrency, 10))
                    figures = asyncio.run(
                        drive(url, name, pngs, concurrency, args.images, args.seconds)
                    )
                    log(f"served {name} c={concurrency}: {figures['images_per_s']:.1f} images/s")
                    levels[str(concurrency)] = figures
                result[f"served_{name}"] = levels
    print(json.dumps(result))


if __name__ == "__main__":
    main()

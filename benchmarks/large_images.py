"""Large images: full-size answers in bounded memory, and tiled against whole-image inference.

    python benchmarks/large_images.py [--checkpoint model/weights/unet-sigmoid.safetensors]
        [--sides 2048 4096] [--untiled-side 2048] [--device auto]

In one run it measures:

* agreement: Dice between the tiled and the whole-image mask of a 1024 x 1024 synthetic image,
  with the service's tile settings (the checkpoint's threshold, or the whole output's median for
  random stand-in weights), and the mean absolute difference of the logits;
* for each side: a fresh service (uvicorn subprocess on a free loopback port) answers
  `POST /v1/models/{name}/mask` for one synthetic side x side PNG: status, mask size, latency,
  and the server's resident memory after warm-up and at its peak (VmRSS, VmHWM);
* the same request with tiling switched off (`UNET_TILE_THRESHOLD_PIXELS` above the image), to
  show what tiling saves.

Prints one JSON object on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from PIL import Image

if not __package__:  # run as `python benchmarks/large_images.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.launch import log, memory_mb, server
from benchmarks.serve import DEFAULT_CHECKPOINT, large_png, prepare_models
from model import load_checkpoint
from model.data.synth import generate_pair
from model.inference.predict import predict
from model.inference.tiling import predict_tiled
from model.network.device import pick_device
from service.settings import Settings

CLIENT_TIMEOUT_S = 600.0  # the server's own UNET_REQUEST_TIMEOUT_S (default 60 s) applies


def agreement(checkpoint: Path, device: torch.device, settings: Settings) -> dict[str, Any]:
    """Tiled against whole-image inference on a 1024 x 1024 synthetic image."""
    network, meta = load_checkpoint(checkpoint, device)
    raw, _ = generate_pair(np.random.default_rng(1), 1024)
    x = raw[None].astype(np.float32) / 255
    started = time.perf_counter()
    whole = predict(network, x)
    whole_s = time.perf_counter() - started
    started = time.perf_counter()
    tiled = predict_tiled(network, x, settings.tile_size, settings.tile_overlap)
    tiled_s = time.perf_counter() - started
    if meta.default_threshold:
        cut, rule = float(meta.default_threshold["value"]), "checkpoint threshold"
    else:
        cut, rule = float(np.median(whole.output)), "median of the whole-image output"
    a, b = whole.output >= cut, tiled.output >= cut
    return {
        "side": 1024,
        "tile_size": settings.tile_size,
        "tile_overlap": settings.tile_overlap,
        "threshold": cut,
        "threshold_rule": rule,
        "dice": float(2 * (a & b).sum() / max(1, a.sum() + b.sum())),
        "logits_mean_abs_diff": float(np.abs(whole.logits - tiled.logits).mean()),
        "logits_std": float(whole.logits.std()),
        "whole_s": whole_s,
        "tiled_s": tiled_s,
    }


def one_request(env: dict[str, str], workdir: Path, model: str, side: int) -> dict[str, Any]:
    """A fresh server answers one side x side mask request; its memory before and at peak."""
    png = large_png(side)
    with server(env, workdir) as (url, process):
        baseline = memory_mb(process.pid, "VmRSS")
        started = time.perf_counter()
        response = httpx.post(
            f"{url}/v1/models/{model}/mask",
            files={"image": ("large.png", png, "image/png")},
            timeout=CLIENT_TIMEOUT_S,
        )
        elapsed = time.perf_counter() - started
        peak = memory_mb(process.pid)
    size = None
    if response.status_code == 200:
        size = list(Image.open(io.BytesIO(response.content)).size)
    result: dict[str, Any] = {
        "side": side,
        "status": response.status_code,
        "mask_size": size,
        "full_size": size == [side, side],
        "seconds": elapsed,
        "rss_after_warmup_mb": baseline,
        "peak_rss_mb": peak,
    }
    if response.status_code != 200:
        result["body"] = response.text[:500]
    log(f"  {side} px: {result}")
    return result


def main() -> None:
    """Run the benchmark and print its JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--sides", type=int, nargs="+", default=[2048, 4096])
    parser.add_argument("--untiled-side", type=int, default=2048, help="0 to skip")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    device = pick_device(args.device)
    with tempfile.TemporaryDirectory(prefix="unet-large-") as tmp:
        workdir = Path(tmp)
        models = workdir / "models"
        models.mkdir()
        model, weights = prepare_models(args.checkpoint, models)
        settings = Settings(model_dir=models)
        log("tiled against whole-image inference, 1024 x 1024")
        agree = agreement(models / f"{model}.safetensors", device, settings)
        log(f"  {agree}")
        env = {
            "UNET_MODEL_DIR": str(models),
            "UNET_STATE_DIR": str(workdir / "state"),
            "UNET_DEVICE": args.device,
            "UNET_LOG_LEVEL": "warning",
        }
        log("large requests, tiled (default settings)")
        tiled = [one_request(env, workdir, model, side) for side in args.sides]
        untiled = None
        if args.untiled_side:
            log("the same without tiling")
            off = {**env, "UNET_TILE_THRESHOLD_PIXELS": str(args.untiled_side**2 + 1)}
            untiled = one_request(off, workdir, model, args.untiled_side)

    result = {
        "device": str(device),
        "torch": torch.__version__,
        "checkpoint": str(args.checkpoint),
        "weights": weights,
        "max_image_pixels": settings.max_image_pixels,
        "tile_threshold_pixels": settings.tile_threshold_pixels,
        "agreement_1024": agree,
        "tiled": tiled,
        "untiled": untiled,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

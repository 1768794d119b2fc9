"""`benchmarks/serve.py --precision`: INT8 against fp32, in-process and served, in one run.

Both shipped models are quantised once as the service does it (`UNET_PRECISION=int8`, into a
state folder whose cache both servers then read); then, in short interleaved blocks (the machine
is shared, so only ratios measured side by side mean anything):

* the in-process ceilings of the fp32 and the INT8 graph on ONNX Runtime (`benchmarks.raw`);
* two services on unet-sigmoid, one per precision, both up at once and driven in turn at the
  largest `--concurrency` with PNG uploads to `/v1/models/{name}/mask`;

and the mean Dice at each model's threshold on unseen synthetic images (a seed no model saw),
for fp32 and INT8, for both shipped models. Also: the CPU's instruction-set flags that matter for
INT8 (VNNI or not), the load average, and the cold quantisation's time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

from benchmarks.launch import log, server
from benchmarks.load import drive, drive_with_engine_view
from benchmarks.raw import raw_onnxruntime
from model.cards.gate import mean_dice
from model.cards.sources import load_predictor
from model.cards.sources.native import NativePredictor
from model.data.decoding import image_from_array
from model.data.synth import generate_pair, pair_rng
from model.inference.predict import predict
from service.inference.precision import apply_precision
from service.inference.registry import ModelRegistry

MODELS = ("unet-sigmoid", "unet-relu")
WEIGHTS = Path("model/weights")
UNSEEN_SEED = 9_001  # neither training (1), validation (2) nor any test's seed
INT8_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


def cpu_flags() -> dict[str, Any]:
    """The CPU's model name and which INT8-relevant flags /proc/cpuinfo lists."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    flags: set[str] = set()
    name = ""
    for line in text.splitlines():
        if line.startswith("flags") and not flags:
            flags = set(line.split(":", 1)[1].split())
        if line.startswith("model name") and not name:
            name = line.split(":", 1)[1].strip()
    return {"model_name": name, **{flag: flag in flags for flag in INT8_FLAGS}}


def quantise_all(models: Path, state: Path) -> tuple[ModelRegistry, float]:
    """Both models through the service's own INT8 path: (the registry, seconds it took)."""
    registry = ModelRegistry.from_folder(models, torch.device("cpu"))
    start = time.perf_counter()
    apply_precision(registry, "int8", "auto", "cpu", state)
    return registry, time.perf_counter() - start


def unseen_dice(registry: ModelRegistry, state: Path, n: int, side: int) -> dict[str, Any]:
    """Mean Dice at each model's threshold on `n` unseen synthetic images, fp32 and INT8."""
    result = {}
    for served in registry:
        if served.quantized is None:
            result[served.name] = {"int8": None, "why": "not quantised (see the log)"}
            continue
        assert isinstance(served.network, NativePredictor)
        int8 = load_predictor(served.quantized.with_suffix(".json"))
        threshold = served.default_threshold
        outputs: dict[str, list[np.ndarray]] = {"fp32": [], "int8": []}
        masks = []
        for index in range(n):
            pixels, mask = generate_pair(pair_rng(UNSEEN_SEED, index), side)
            image = image_from_array(pixels, served.input)
            outputs["fp32"].append(predict(served.network, image).output)
            outputs["int8"].append(predict(int8, image).output)
            masks.append(mask)
        dice = {p: mean_dice(maps, masks, threshold) for p, maps in outputs.items()}
        result[served.name] = dice | {"difference": dice["fp32"] - dice["int8"], "images": n}
        log(f"  {served.name}: mean Dice fp32 {dice['fp32']:.4f}, int8 {dice['int8']:.4f}")
    return result


def compare_precisions(args: argparse.Namespace) -> dict[str, Any]:
    """The `--precision` mode of benchmarks/serve.py."""
    load_at_start = os.getloadavg()
    concurrency = max(args.concurrency)
    with tempfile.TemporaryDirectory(prefix="unet-bench-int8-") as tmp:
        work = Path(tmp)
        models, state = work / "models", work / "int8-state"
        models.mkdir()
        for name in MODELS:
            for suffix in (".json", ".safetensors"):
                shutil.copy(WEIGHTS / f"{name}{suffix}", models / f"{name}{suffix}")
        log("quantising both models as UNET_PRECISION=int8 does (cold cache)")
        registry, cold_s = quantise_all(models, state)
        log(f"  {cold_s:.0f} s")
        log(f"mean Dice on {args.dice_images} unseen synthetic images")
        dice = unseen_dice(registry, state, args.dice_images, args.side)
        sigmoid = registry.get("unet-sigmoid")
        assert sigmoid is not None and sigmoid.quantized is not None
        assert isinstance(sigmoid.network, NativePredictor)
        network = sigmoid.network.network
        graphs = {
            "fp32": state / "onnx" / f"{registry_fp32_digest(sigmoid)}.onnx",
            "int8": sigmoid.quantized,
        }
        served_dir = work / "served"
        served_dir.mkdir()
        for suffix in (".json", ".safetensors"):
            shutil.copy(models / f"unet-sigmoid{suffix}", served_dir / f"unet-sigmoid{suffix}")
        fp32_state = work / "fp32-state"
        shutil.copytree(state / "onnx", fp32_state / "onnx")
        pngs = _pngs(args.side)
        base = {"UNET_MODEL_DIR": str(served_dir), "UNET_LOG_LEVEL": "warning"}
        raw: dict[str, list[dict[str, Any]]] = {"fp32": [], "int8": []}
        service: dict[str, list[dict[str, Any]]] = {"fp32": [], "int8": []}
        with (
            server({**base, "UNET_STATE_DIR": str(fp32_state)}, work) as (fp32_url, fp32_proc),
            server({**base, "UNET_STATE_DIR": str(state), "UNET_PRECISION": "int8"}, work) as (
                int8_url,
                int8_proc,
            ),
        ):
            urls = {"fp32": (fp32_url, fp32_proc.pid), "int8": (int8_url, int8_proc.pid)}
            for precision, (url, _) in urls.items():
                info = httpx.get(f"{url}/v1/models/unet-sigmoid", timeout=10).json()
                assert info["precision"] == precision, info
                asyncio.run(drive(url, "unet-sigmoid", pngs, concurrency, 2 * concurrency, 30))
            for block in range(args.blocks):
                order = ("fp32", "int8") if block % 2 == 0 else ("int8", "fp32")
                for precision in order:
                    log(f"block {block + 1}/{args.blocks}: {precision}")
                    raw[precision].append(
                        raw_onnxruntime(network, graphs[precision], args.side, 64, args.block_s)
                    )
                    url, pid = urls[precision]
                    service[precision].append(
                        drive_with_engine_view(
                            url, "unet-sigmoid", pngs, concurrency, 10_000, args.block_s, pid
                        )
                    )
    return {
        "cpu": cpu_flags(),
        "cpu_cores": os.cpu_count(),
        "load_average_at_start": load_at_start,
        "load_average_at_end": os.getloadavg(),
        "image_side": args.side,
        "concurrency": concurrency,
        "cold_quantisation_s": cold_s,
        "unseen_dice": dice,
        "raw": raw,
        "service": service,
        "summary": _summary(raw, service),
    }


def registry_fp32_digest(served: Any) -> str:
    """The checkpoint's own digest (the fp32 export's cache name) of an INT8 served model."""
    from model.cards.checkpoint import checkpoint_digest

    return checkpoint_digest(served.path)


def _pngs(side: int) -> list[bytes]:
    from benchmarks.serve import synthetic_pngs

    return synthetic_pngs(side, 16)


def _summary(raw: dict[str, list[Any]], service: dict[str, list[Any]]) -> dict[str, Any]:
    """Per block, INT8 / fp32 for the ceiling and the service, and their medians."""
    ceilings = [
        i["ceiling_images_per_s"] / f["ceiling_images_per_s"]
        for f, i in zip(raw["fp32"], raw["int8"], strict=True)
    ]
    served = [
        i["images_per_s"] / f["images_per_s"]
        for f, i in zip(service["fp32"], service["int8"], strict=True)
    ]
    return {
        "ceiling_ratio_per_block": ceilings,
        "service_ratio_per_block": served,
        "ceiling_ratio_median": float(np.median(ceilings)),
        "service_ratio_median": float(np.median(served)),
        "service_images_per_s": {
            p: [r["images_per_s"] for r in runs] for p, runs in service.items()
        },
        "ceiling_images_per_s": {
            p: [r["ceiling_images_per_s"] for r in runs] for p, runs in raw.items()
        },
    }

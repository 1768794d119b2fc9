"""Serving throughput and latency: the HTTP service against the raw model in-process.

    python benchmarks/serve.py [--checkpoint model/weights/unet-sigmoid.safetensors]
        [--side 256] [--concurrency 1 4 16] [--requests 64] [--seconds 60] [--device auto]
        [--large-side 2048] [--no-overload]
    python benchmarks/serve.py --workers 1 2 [--side 32] [--concurrency 16] [--requests 3000]
    python benchmarks/serve.py --precision [--blocks 3] [--block-s 8] [--dice-images 32]

In one run it measures:

* the raw in-process throughput of the same model on the same device, for each backend the
  service can run it on (torch; on CPU also ONNX Runtime, on the graph the service exports): the
  best of a few ways of running it (one forward pass at a time with every core, one
  single-threaded pass per core in parallel, batches), and the single-image model time; the
  best over the backends is the ceiling;
* the service on its default backend (`UNET_BACKEND=auto`), started as a real uvicorn subprocess
  on a free loopback port, driven with PNG uploads to `POST /v1/models/{name}/mask` by 1, 4 and
  16 concurrent clients: images/s, p50 and p99 latency, failures, the server's resident memory
  once ready (VmRSS) and its peak (VmHWM), after one `--large-side` px image if asked for; on
  CPU, the same service on torch (`UNET_BACKEND=torch`);
* the same service with batching off (`UNET_MAX_BATCH=1`, `UNET_BATCH_WAIT_MS=0`);
* overload: a server with a tiny queue driven far past capacity must answer 503 with
  `Retry-After` (never hang), and answer normally again once the load drops.

With `--precision` it compares INT8 (`UNET_PRECISION=int8`) with fp32 and nothing else: the
in-process ceilings and the service on each, interleaved, and the mean Dice of both shipped
models on unseen images (benchmarks/precision.py).

With `--workers N M ...` it measures only the service with `UNET_WORKERS` = N, M, ... worker
processes on one port, in one run, at the largest `--concurrency`; with tiny images (`--side
32`) the HTTP path is the bottleneck, so the ratio is what extra processes buy.

Without the checkpoint (the shipped weights are trained separately), a random-weight model of
the same architecture is used: speed does not depend on the weights. Prints one JSON object on
stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if not __package__:  # run as `python benchmarks/serve.py`: import the package as the others do
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import numpy as np
import torch
from PIL import Image

from benchmarks.launch import READY_WITHIN_S, log, memory_mb, server, wait_ready
from benchmarks.load import drive, drive_with_engine_view
from benchmarks.raw import raw_onnxruntime, raw_throughput
from model import UNet, UNetConfig, load_checkpoint, save
from model.cards.checkpoint import checkpoint_digest, checkpoint_paths
from model.cards.to_onnx import cached_export
from model.data.synth import generate_pair
from model.network.device import pick_device
from service.inference.plan import plan_engine, usable_cores
from service.settings import Settings

DEFAULT_CHECKPOINT = Path("model/weights/unet-sigmoid.safetensors")


def prepare_models(checkpoint: Path, folder: Path) -> tuple[str, str]:
    """Put the checkpoint (or a random stand-in) in `folder`: (model name, weights kind)."""
    weights, meta = checkpoint_paths(checkpoint)
    if weights.is_file() and meta.is_file():
        shutil.copy(weights, folder / weights.name)
        shutil.copy(meta, folder / meta.name)
        return weights.stem, "checkpoint"
    log(f"{weights} not found: serving a random-weight model of the same architecture")
    torch.manual_seed(0)
    save(UNet(UNetConfig(depth=3, base_channels=16)).eval(), folder / f"{weights.stem}.safetensors")
    return weights.stem, "random (same architecture; speed does not depend on the weights)"


def synthetic_pngs(side: int, count: int, seed: int = 0, masks: bool = False) -> list[bytes]:
    """`count` synthetic microscopy images (or, with `masks`, their masks), PNG-encoded."""
    rng = np.random.default_rng(seed)
    pngs = []
    for _ in range(count):
        image, mask = generate_pair(rng, side)
        buffer = io.BytesIO()
        Image.fromarray(mask.astype(np.uint8) * 255 if masks else image).save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    return pngs


def serve_run(
    env: dict[str, str], workdir: Path, model: str, pngs: list[bytes], args: argparse.Namespace
) -> dict[str, Any]:
    """Start a server with `env` and drive it at each concurrency level."""
    levels: dict[str, Any] = {}
    with server(env, workdir) as (url, process):
        started = memory_mb(process.pid, "VmRSS")
        backend = httpx.get(f"{url}/v1/models/{model}", timeout=10).json().get("backend")
        log(f"  backend: {backend}, resident after start-up {started:.0f} MiB")
        for concurrency in args.concurrency:
            asyncio.run(drive(url, model, pngs, concurrency, 2 * concurrency, args.seconds))
            result = drive_with_engine_view(
                url, model, pngs, concurrency, args.requests, args.seconds, process.pid
            )
            log(
                f"  c={concurrency}: {result['images_per_s']:.2f} images/s, "
                f"p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
                f"failed {result['failed']}, batch {result.get('mean_batch_size', 0):.1f}, "
                f"forward {result.get('forward_ms_per_pass', 0):.1f} ms, CPU per request: "
                f"server {result.get('server_cpu_ms_per_request', 0):.1f} ms, "
                f"clients {result.get('client_cpu_ms_per_request', 0):.1f} ms"
            )
            levels[str(concurrency)] = result
        large = large_request(url, model, args.large_side) if args.large_side else None
        peak = memory_mb(process.pid)
    log(f"  peak resident {peak:.0f} MiB")
    return {
        "backend": backend,
        "levels": levels,
        "rss_after_start_mb": started,
        "large_image": large,
        "peak_rss_mb": peak,
    }


def large_png(side: int, seed: int = 0) -> bytes:
    """A side x side synthetic microscopy PNG (a 1024 px field repeated: cheap to make)."""
    field, _ = generate_pair(np.random.default_rng(seed), min(side, 1024))
    reps = -(-side // field.shape[0])
    buffer = io.BytesIO()
    Image.fromarray(np.tile(field, (reps, reps))[:side, :side]).save(buffer, format="PNG")
    return buffer.getvalue()


def large_request(url: str, model: str, side: int) -> dict[str, Any]:
    """One side x side mask request after the load levels (tiled above the tile threshold)."""
    started = time.perf_counter()
    response = httpx.post(
        f"{url}/v1/models/{model}/mask",
        files={"image": ("large.png", large_png(side), "image/png")},
        timeout=600,
    )
    result = {"side": side, "status": response.status_code, "s": time.perf_counter() - started}
    log(f"  one {side} px image: {result}")
    return result


def overload_run(
    env: dict[str, str], workdir: Path, model: str, pngs: list[bytes], seconds: float
) -> dict[str, Any]:
    """Far past capacity with a tiny queue: 503 + Retry-After, then normal service again."""
    tiny = {**env, "UNET_QUEUE_SIZE": "2", "UNET_REQUEST_TIMEOUT_S": "10"}
    with server(tiny, workdir) as (url, _):
        flood = asyncio.run(drive(url, model, pngs, 64, 256, seconds))
        time.sleep(1)
        after = asyncio.run(drive(url, model, pngs, 1, 10, seconds))
    log(f"  overload: {flood['statuses']}, then {after['statuses']}")
    return {"flood_c64": flood, "after_c1": after}


def workers_run(
    env: dict[str, str], workdir: Path, model: str, pngs: list[bytes], args: argparse.Namespace
) -> dict[str, Any]:
    """The same load on 1, 2, ... worker processes (UNET_WORKERS): images/s and their ratio."""
    concurrency = max(args.concurrency)
    runs: dict[str, Any] = {}
    for workers in args.workers:
        with server({**env, "UNET_WORKERS": str(workers)}, workdir) as (url, process):
            # Every worker warms up on its own; readiness on fresh connections reaches them all.
            for _ in range(8 * workers):
                wait_ready(url, process, READY_WITHIN_S)
            asyncio.run(drive(url, model, pngs, concurrency, 20 * concurrency, args.seconds))
            result = asyncio.run(drive(url, model, pngs, concurrency, args.requests, args.seconds))
        log(
            f"  {workers} worker(s), c={concurrency}: {result['images_per_s']:.1f} images/s, "
            f"p50 {result['p50_ms']:.1f} ms, failed {result['failed']}"
        )
        runs[str(workers)] = result
    first, *_ = args.workers
    return {
        "concurrency": concurrency,
        "runs": runs,
        "speedup_vs_first": {
            n: runs[n]["images_per_s"] / runs[str(first)]["images_per_s"] for n in runs
        },
    }


def service_summary(
    raw: dict[str, Any], run: dict[str, Any], concurrency: list[int]
) -> dict[str, Any]:
    """How close one service run comes to the in-process ceilings (`raw`: by backend)."""
    top, one = str(max(concurrency)), str(min(concurrency))
    high, low = run["levels"][top], run["levels"][one]
    forward = low.get("forward_ms_per_pass", float("nan"))
    best = max(r["ceiling_images_per_s"] for r in raw.values())
    fastest_single = min(r["model_ms_single_image"] for r in raw.values())
    own = raw.get(run["backend"]) or {}
    return {
        "backend": run["backend"],
        f"throughput_vs_best_ceiling_c{top}": high["images_per_s"] / best,
        f"throughput_vs_own_backend_ceiling_c{top}": high["images_per_s"]
        / own.get("ceiling_images_per_s", float("nan")),
        f"failed_c{top}": high["failed"],
        # Overhead: what a request spends beyond the forward pass the service ran for it.
        f"overhead_ms_c{one}": low["mean_ms"] - forward,
        f"overhead_fraction_of_forward_c{one}": low["mean_ms"] / forward - 1,
        # Stricter: against the fastest single-image pass measured in-process on any backend.
        f"latency_vs_best_raw_single_image_c{one}": low["mean_ms"] / fastest_single - 1,
        f"latency_vs_own_backend_single_image_c{one}": low["mean_ms"]
        / own.get("model_ms_single_image", float("nan"))
        - 1,
        **cpu_budget(own, high, top),
    }


def cpu_budget(own: dict[str, Any], high: dict[str, Any], top: str) -> dict[str, Any]:
    """Where a request's CPU time goes under load, against the model pass alone.

    With every core busy, throughput is cores / CPU time per request; the model's own pass is
    `cpu_ms_per_image_at_ceiling`, and whatever the server and the clients (on the same cores
    here) spend beyond it is what keeps the service under the in-process ceiling.
    """
    model = own.get("cpu_ms_per_image_at_ceiling")
    server = high.get("server_cpu_ms_per_request")
    if model is None or server is None:
        return {}
    clients = high["client_cpu_ms_per_request"]
    return {
        f"cpu_ms_per_request_c{top}": {
            "model_pass_at_the_ceiling": model,
            "server": server,
            "clients": clients,
            "beyond_the_model": server + clients - model,
        },
        f"model_share_of_cpu_c{top}": model / (server + clients),
    }


def summary(
    raw: dict[str, Any],
    services: dict[str, dict[str, Any]],
    unbatched: dict[str, Any],
    concurrency: list[int],
) -> dict[str, Any]:
    """The figures the issues ask for, from the runs: the default service first."""
    top = str(max(concurrency))
    default = services["default"]["levels"][top]["images_per_s"]
    return {
        "ceiling_images_per_s_by_backend": {
            name: r["ceiling_images_per_s"] for name, r in raw.items()
        },
        f"batching_speedup_c{top}": default / unbatched["levels"][top]["images_per_s"],
        **{name: service_summary(raw, run, concurrency) for name, run in services.items()},
    }


def main() -> None:
    """Run the benchmark and print its JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=64, help="per concurrency level")
    parser.add_argument("--seconds", type=float, default=60, help="time bound per level")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-overload", action="store_true", help="skip the overload check")
    parser.add_argument(
        "--large-side", type=int, default=0, help="then one image this large (peak memory)"
    )
    parser.add_argument(
        "--workers", type=int, nargs="+", help="compare these UNET_WORKERS counts, nothing else"
    )
    parser.add_argument(
        "--precision",
        action="store_true",
        help="compare INT8 with fp32 (benchmarks/precision.py), nothing else",
    )
    parser.add_argument("--blocks", type=int, default=3, help="--precision: interleaved blocks")
    parser.add_argument("--block-s", type=float, default=8, help="--precision: seconds a block")
    parser.add_argument("--dice-images", type=int, default=32, help="--precision: unseen images")
    args = parser.parse_args()
    if args.precision:
        from benchmarks.precision import compare_precisions

        print(json.dumps(compare_precisions(args), indent=2))
        return
    if args.workers:
        print(json.dumps(compare_workers(args), indent=2))
        return

    device = pick_device(args.device)
    load_at_start = os.getloadavg()  # a shared machine's other work lowers every figure
    with tempfile.TemporaryDirectory(prefix="unet-bench-") as tmp:
        workdir = Path(tmp)
        models = workdir / "models"
        models.mkdir()
        model, weights = prepare_models(args.checkpoint, models)
        pngs = synthetic_pngs(args.side, 16)
        network, _ = load_checkpoint(models / f"{model}.safetensors", device)
        log(f"raw in-process throughput on {device}")
        raw = {"torch": raw_throughput(network, device, args.side, args.requests, args.seconds / 3)}
        if device.type == "cpu":  # the service runs torch on a GPU
            digest = checkpoint_digest(models / f"{model}.safetensors")
            onnx_path, _ = cached_export(network, digest, workdir / "onnx")
            raw["onnxruntime"] = raw_onnxruntime(
                network, onnx_path, args.side, args.requests, args.seconds / 3
            )
        del network
        env = {
            "UNET_MODEL_DIR": str(models),
            "UNET_STATE_DIR": str(workdir / "state"),
            "UNET_DEVICE": args.device,
            "UNET_LOG_LEVEL": "warning",
        }
        plan = plan_engine(Settings(model_dir=models), device)
        log(f"service, default backend and batching ({plan.limits})")
        services = {"default": serve_run(env, workdir, model, pngs, args)}
        if device.type == "cpu":
            log("service on torch")
            torch_env = {**env, "UNET_BACKEND": "torch", "UNET_STATE_DIR": str(workdir / "t")}
            services["torch"] = serve_run(torch_env, workdir, model, pngs, args)
        off = {**env, "UNET_MAX_BATCH": "1", "UNET_BATCH_WAIT_MS": "0"}
        log("service, batching off")
        unbatched = serve_run(off, workdir, model, pngs, args)
        overload = (
            None if args.no_overload else overload_run(env, workdir, model, pngs, args.seconds)
        )

    result = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu_cores": usable_cores(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "checkpoint": str(args.checkpoint),
        "weights": weights,
        "image_side": args.side,
        "engine": {
            "max_batch": plan.limits.max_batch,
            "batch_wait_ms": plan.limits.wait_s * 1000,
            "workers": plan.limits.workers,
            "torch_threads": plan.torch_threads,
            "channels_last": plan.channels_last,
        },
        "load_average_at_start": load_at_start,
        "raw": raw,
        "service": services["default"],
        "service_torch": services.get("torch"),
        "service_batching_off": unbatched,
        "overload": overload,
        "summary": summary(raw, services, unbatched, args.concurrency),
    }
    print(json.dumps(result, indent=2))


def compare_workers(args: argparse.Namespace) -> dict[str, Any]:
    """The `--workers` mode: one server per worker count, the same load on each."""
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="unet-bench-") as tmp:
        workdir = Path(tmp)
        models = workdir / "models"
        models.mkdir()
        model, weights = prepare_models(args.checkpoint, models)
        env = {
            "UNET_MODEL_DIR": str(models),
            "UNET_STATE_DIR": str(workdir / "state"),
            "UNET_DEVICE": args.device,
            "UNET_LOG_LEVEL": "warning",
        }
        log(f"service with {args.workers} worker process(es), {args.side} x {args.side} images")
        runs = workers_run(env, workdir, model, synthetic_pngs(args.side, 16), args)
    return {
        "cpu_cores": usable_cores(),
        "load_average_before": load,
        "platform": platform.platform(),
        "weights": weights,
        "image_side": args.side,
        "workers": runs,
    }


if __name__ == "__main__":
    main()

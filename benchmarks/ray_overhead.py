"""The overhead of Ray Serve's proxy against the plain service, at concurrency 1 and 16, in one run.

    python -m benchmarks.ray_overhead [--rounds 3] [--requests 24] [--side 256]
        [--concurrency 1 16] [--overload 128]

Needs the `[ray]` extra and root: Ray binds every interface, so the script re-runs itself in a
private network namespace with only loopback (`unshare -n`), where it starts both the plain
service (a uvicorn subprocess on a free loopback port) and a local Ray instance serving
`service.ray_app:build` with one replica on its proxy at 127.0.0.1:8000. Both serve the same
model with the same settings (CPU, one torch thread, Ray's default queue bounds); they take
turns, block by block, so that whatever else the machine does hits both alike. For each it
reports mean latency, images/s and the engine's forward pass (from `/metrics`); the overhead is
Ray's mean latency minus the plain one. Last, a burst of `--overload` requests at once past
Ray's `max_ongoing_requests` + `max_queued_requests` shows how Ray refuses (statuses,
Retry-After). Prints one JSON object on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.launch import log, server
from benchmarks.load import drive, drive_with_engine_view
from benchmarks.serve import DEFAULT_CHECKPOINT, prepare_models, synthetic_pngs

IN_NAMESPACE = "UNET_BENCH_LOOPBACK_ONLY"
PROXY = "http://127.0.0.1:8000"


def in_loopback_namespace() -> None:
    """Re-run this script inside a new network namespace with only loopback up (needs root)."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        raise SystemExit("needs unshare and ip (iproute2), as root")
    command = [sys.executable, "-m", "benchmarks.ray_overhead", *sys.argv[1:]]
    shell = 'ip link set lo up && exec "$@"'
    env = {**os.environ, IN_NAMESPACE: "1"}
    raise SystemExit(
        subprocess.run(
            ["unshare", "-n", "--", "sh", "-c", shell, "sh", *command], env=env
        ).returncode
    )


def only_loopback() -> bool:
    """Whether this process's network namespace has no interface but `lo`."""
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    return [line.split(":")[1].strip() for line in links.stdout.splitlines()] == ["lo"]


def start_ray(env: dict[str, str]) -> None:
    """A local Ray instance serving the app with one replica on 127.0.0.1:8000."""
    os.environ.update(env)  # Ray's workers inherit it: the replica reads its UNET_* settings
    import ray
    from ray import serve

    from service.ray_app import build

    # log_to_driver off: Ray's worker logs would otherwise land on stdout, inside the JSON.
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=100 * 1024 * 1024,
        log_to_driver=False,
    )
    serve.start(http_options={"host": "127.0.0.1", "port": 8000})
    serve.run(build(), name="unet", route_prefix="/")


def stop_ray() -> None:
    """Shut Serve and Ray down."""
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


def blocks(
    urls: dict[str, str], model: str, pngs: list[bytes], args: argparse.Namespace
) -> dict[str, Any]:
    """Alternating blocks at each concurrency: per service, the mean of its blocks."""
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {
        name: {c: [] for c in args.concurrency} for name in urls
    }
    for url in urls.values():  # warm-up, not counted
        asyncio.run(drive(url, model, pngs, max(args.concurrency), 32, 120))
    for round_ in range(args.rounds):
        for concurrency in args.concurrency:
            requests = args.requests * max(1, concurrency // 4)
            order = list(urls) if round_ % 2 == 0 else list(reversed(urls))
            for name in order:
                result = drive_with_engine_view(urls[name], model, pngs, concurrency, requests, 600)
                if result["failed"]:
                    raise RuntimeError(f"{name}: failed requests: {result['statuses']}")
                runs[name][concurrency].append(result)
                log(
                    f"round {round_} c={concurrency} {name}: {result['mean_ms']:.1f} ms, "
                    f"{result['images_per_s']:.2f} images/s, "
                    f"forward {result.get('forward_ms_per_pass', 0):.1f} ms"
                )
    figures: dict[str, Any] = {}
    for concurrency in args.concurrency:
        level = {}
        for name in urls:
            done = runs[name][concurrency]
            level[name] = {
                "mean_ms": float(np.mean([r["mean_ms"] for r in done])),
                "p99_ms": float(np.mean([r["p99_ms"] for r in done])),
                "images_per_s": float(np.mean([r["images_per_s"] for r in done])),
                "forward_ms_per_pass": float(
                    np.mean([r.get("forward_ms_per_pass", np.nan) for r in done])
                ),
                "mean_batch_size": float(np.mean([r.get("mean_batch_size", 1) for r in done])),
            }
        plain, ray = level["plain"], level["ray"]
        level["ray_overhead_ms"] = ray["mean_ms"] - plain["mean_ms"]
        level["ray_latency_ratio"] = ray["mean_ms"] / plain["mean_ms"]
        level["ray_throughput_ratio"] = ray["images_per_s"] / plain["images_per_s"]
        figures[f"c{concurrency}"] = level
    return figures


def main() -> None:
    """Both services up, alternating blocks, an overload burst on Ray, one JSON object out."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=24, help="per block at concurrency 1")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--overload", type=int, default=128)
    args = parser.parse_args()
    if os.environ.get(IN_NAMESPACE) != "1":
        in_loopback_namespace()
    if not only_loopback():
        raise SystemExit("refusing to start Ray: this network namespace has more than loopback")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "models").mkdir()
        model, weights = prepare_models(args.checkpoint, workdir / "models")
        pngs = synthetic_pngs(args.side, 16)
        common = {
            "UNET_MODEL_DIR": str(workdir / "models"),
            "UNET_DEVICE": "cpu",
            "UNET_TORCH_THREADS": "1",
            "UNET_LOG_LEVEL": "warning",
        }
        ray_env = {**common, "UNET_STATE_DIR": str(workdir / "ray-state")}
        plain_env = {**common, "UNET_STATE_DIR": str(workdir / "plain-state")}
        log("starting Ray (one replica)")
        began = time.monotonic()
        start_ray(ray_env)
        deploy_s = time.monotonic() - began
        try:
            with server(plain_env, workdir) as (plain_url, _):
                figures = blocks({"plain": plain_url, "ray": PROXY}, model, pngs, args)
                log(f"overload: {args.overload} requests at once on Ray")
                burst = asyncio.run(drive(PROXY, model, pngs, args.overload, args.overload, 300))
                burst_plain = asyncio.run(
                    drive(plain_url, model, pngs, args.overload, args.overload, 300)
                )
        finally:
            stop_ray()
    from service.settings import Settings

    defaults = Settings()
    print(
        json.dumps(
            {
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "load_1min": os.getloadavg()[0],
                },
                "model": model,
                "weights": weights,
                "side": args.side,
                "ray_version": __import__("ray").__version__,
                "ray_deploy_s": deploy_s,
                "ray_max_ongoing_requests": defaults.ray_max_ongoing_requests,
                "ray_max_queued_requests": defaults.ray_max_queued_requests,
                "figures": figures,
                "overload": {"ray": burst, "plain": burst_plain},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

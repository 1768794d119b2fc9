"""What the instance step adds to `/mask`: latency at 1024 px, memory at 4096 px.

    python benchmarks/instances.py [--checkpoint model/weights/unet-sigmoid.safetensors]
        [--rounds 12] [--memory-side 4096] [--baseline-source DIR]

In one run, against a real service (uvicorn subprocess on a loopback port):

* latency: a 1024 x 1024 synthetic image dense with nuclei (a 1741 px field scaled down, about
  a thousand objects), sent to `/mask` and to `/instances` in each format, interleaved round by
  round so that the machine's load hits every route alike; medians and each route's ratio to
  `/mask`;
* memory: a fresh service per route answers one `--memory-side` image (`/mask`, then
  `/instances?format=geojson` on another fresh service): the server's peak resident memory
  (VmHWM) and the object count. With `--baseline-source` (another checkout, e.g. `git archive`
  of an older commit), `/instances` is also answered by that code, in the same run, for a
  before/after figure.

Prints one JSON object on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

if not __package__:  # run as `python benchmarks/instances.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.launch import log, memory_mb, server
from benchmarks.serve import DEFAULT_CHECKPOINT, large_png, prepare_models
from model.data.synth import generate_pair, pair_rng

CLIENT_TIMEOUT_S = 600.0
FIELD_SCALE = 1.7  # a 1741 px field scaled to 1024: about a thousand objects found
ROUTES = {
    "mask": ("mask", {}),
    "instances_json": ("instances", {"format": "json"}),
    "instances_geojson": ("instances", {"format": "geojson"}),
    "instances_labels": ("instances", {"format": "labels"}),
    "instances_json_none": ("instances", {"format": "json", "split": "none"}),
}


def dense_png(side: int = 1024) -> bytes:
    """A side x side synthetic image with FIELD_SCALE² times the generator's nuclei per area."""
    field, _ = generate_pair(pair_rng(4711, 0), round(side * FIELD_SCALE))
    small = Image.fromarray(field).resize((side, side), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    small.save(buffer, format="PNG")
    return buffer.getvalue()


def post(url: str, model: str, route: str, params: dict[str, str], png: bytes) -> httpx.Response:
    """One request; fails loudly on anything but 200."""
    response = httpx.post(
        f"{url}/v1/models/{model}/{route}",
        files={"image": ("image.png", png, "image/png")},
        params=params,
        timeout=CLIENT_TIMEOUT_S,
    )
    response.raise_for_status()
    return response


def latency(url: str, model: str, rounds: int) -> dict[str, Any]:
    """Median seconds of each route over `rounds` interleaved rounds, and ratios to /mask."""
    png = dense_png()
    for route, params in ROUTES.values():  # warm every path once
        post(url, model, route, params, png)
    times: dict[str, list[float]] = {name: [] for name in ROUTES}
    for i in range(rounds):
        order = list(ROUTES) if i % 2 == 0 else list(reversed(ROUTES))
        for name in order:
            route, params = ROUTES[name]
            started = time.perf_counter()
            post(url, model, route, params, png)
            times[name].append(time.perf_counter() - started)
    count = int(post(url, model, "instances", {}, png).headers["x-object-count"])
    merged = int(post(url, model, "instances", {"split": "none"}, png).headers["x-object-count"])
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {
        "side": 1024,
        "objects_watershed": count,
        "objects_none": merged,
        "rounds": rounds,
        "median_s": {name: round(value, 4) for name, value in medians.items()},
        "ratio_to_mask": {
            name: round(value / medians["mask"], 3) for name, value in medians.items()
        },
    }


def peak(
    env: dict[str, str],
    workdir: Path,
    model: str,
    side: int,
    route: str,
    source: Path | None = None,
) -> dict[str, Any]:
    """A fresh server (running `source`'s code if given) answers one side x side request on
    `route`; its peak memory."""
    png = large_png(side)
    params = {"format": "geojson"} if route == "instances" else {}
    with server(env, workdir, source) as (url, process):
        baseline = memory_mb(process.pid, "VmRSS")
        started = time.perf_counter()
        response = post(url, model, route, params, png)
        elapsed = time.perf_counter() - started
        top = memory_mb(process.pid)
    result = {
        "route": route,
        "code": str(source) if source else "this checkout",
        "side": side,
        "seconds": round(elapsed, 2),
        "rss_after_warmup_mb": baseline,
        "peak_rss_mb": top,
        "objects": int(response.headers.get("x-object-count", "0")) or None,
    }
    log(f"  {result}")
    return result


def main() -> None:
    """Run the benchmark and print its JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--rounds", type=int, default=12, help="0 to skip")
    parser.add_argument("--memory-side", type=int, default=4096, help="0 to skip")
    parser.add_argument("--baseline-source", type=Path, help="older code to compare memory with")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="unet-instances-") as tmp:
        workdir = Path(tmp)
        models = workdir / "models"
        models.mkdir()
        model, weights = prepare_models(args.checkpoint, models)
        env = {
            "UNET_MODEL_DIR": str(models),
            "UNET_STATE_DIR": str(workdir / "state"),
            "UNET_LOG_LEVEL": "warning",
            # A 4096 px image on a loaded two-core machine outlasts the default 60 s.
            "UNET_REQUEST_TIMEOUT_S": "900",
        }
        timing = None
        if args.rounds:
            log("latency at 1024 px, interleaved")
            with server(env, workdir) as (url, _):
                timing = latency(url, model, args.rounds)
            log(f"  {timing}")
        memory = []
        if args.memory_side:
            log(f"peak memory at {args.memory_side} px, one fresh server per route")
            runs: list[tuple[str, Path | None]] = [("mask", None), ("instances", None)]
            if args.baseline_source:
                runs.insert(1, ("instances", args.baseline_source.resolve()))
            memory = [peak(env, workdir, model, args.memory_side, r, s) for r, s in runs]
    result = {"model": model, "weights": weights, "latency": timing, "memory": memory}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

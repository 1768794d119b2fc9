"""Resident memory of the service, before and after a change, per backend, in one run.

    python -m benchmarks.memory [--before HEAD] [--rounds 3] [--requests 160]
        [--concurrency 16] [--large-side 2048] [--side 256]

For each round, and for "before" (a clean export of git revision `--before`) and "after" (the
working tree) in alternating order, on the default backend and on torch (`UNET_BACKEND=torch`):
a fresh service, its resident memory once ready (VmRSS), `--requests` mask requests from
`--concurrency` clients, one `--large-side` px image, and then its peak resident memory
(VmHWM) and throughput. Each figure is reported per run and as the median over the rounds,
with the after/before ratios and the default backend's start-up residency over torch's.
Prints one JSON object on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.launch import log, memory_mb, server
from benchmarks.load import drive
from benchmarks.overhead import ROOT, export_revision
from benchmarks.serve import DEFAULT_CHECKPOINT, large_request, prepare_models, synthetic_pngs

BACKENDS = ("auto", "torch")
FIGURES = ("rss_after_start_mb", "peak_rss_mb", "images_per_s")


def one_run(
    env: dict[str, str],
    workdir: Path,
    source: Path,
    model: str,
    pngs: list[bytes],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """A fresh service from `source`: start-up residency, load, one large image, peak."""
    with server(env, workdir, source) as (url, process):
        started = memory_mb(process.pid, "VmRSS")
        load = asyncio.run(drive(url, model, pngs, args.concurrency, args.requests, 600))
        large = large_request(url, model, args.large_side) if args.large_side else None
        peak = memory_mb(process.pid)
    if load["failed"] or (large and large["status"] != 200):
        raise RuntimeError(f"failed requests: {load['statuses']}, large image: {large}")
    return {
        "rss_after_start_mb": started,
        "peak_rss_mb": peak,
        "images_per_s": load["images_per_s"],
    }


def main() -> None:
    """Run the comparison and print its JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default="HEAD", help="git revision to compare against")
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument(
        "--model-dir", type=Path, help="serve every model of this folder (load: the checkpoint's)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=160)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--large-side", type=int, default=2048)
    parser.add_argument("--side", type=int, default=256)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="unet-memory-") as tmp:
        workdir = Path(tmp)
        models = workdir / "models"
        models.mkdir()
        model, weights = prepare_models(args.checkpoint, models)
        if args.model_dir:
            shutil.copytree(args.model_dir, models, dirs_exist_ok=True)
        commit = export_revision(args.before, workdir / "before")
        sources = {"before": workdir / "before", "after": ROOT}
        pngs = synthetic_pngs(args.side, 16)
        runs: dict[str, list[dict[str, Any]]] = {
            f"{name}/{backend}": [] for name in sources for backend in BACKENDS
        }
        for round_ in range(args.rounds):
            order = list(sources) if round_ % 2 == 0 else list(reversed(sources))
            for name in order:
                for backend in BACKENDS:
                    env = {
                        "UNET_MODEL_DIR": str(models),
                        # One state folder per tree and backend: the ONNX export is cached.
                        "UNET_STATE_DIR": str(workdir / f"state-{name}-{backend}"),
                        "UNET_BACKEND": backend,
                        "UNET_LOG_LEVEL": "warning",
                    }
                    figures = one_run(env, workdir, sources[name], model, pngs, args)
                    runs[f"{name}/{backend}"].append(figures)
                    log(f"round {round_ + 1} {name} {backend}: {figures}")

    medians = {
        key: {figure: statistics.median(run[figure] for run in found) for figure in FIGURES}
        for key, found in runs.items()
    }
    ratios = {
        backend: {
            figure: medians[f"after/{backend}"][figure] / medians[f"before/{backend}"][figure]
            for figure in FIGURES
        }
        for backend in BACKENDS
    }
    print(
        json.dumps(
            {
                "before": {"revision": args.before, "commit": commit},
                "weights": weights,
                "model_dir": str(args.model_dir) if args.model_dir else None,
                "runs": runs,
                "medians": medians,
                "ratios_after_over_before": ratios,
                "default_start_up_over_torch": {
                    name: medians[f"{name}/auto"]["rss_after_start_mb"]
                    / medians[f"{name}/torch"]["rss_after_start_mb"]
                    for name in sources
                },
                "concurrency": args.concurrency,
                "requests": args.requests,
                "image_side": args.side,
                "large_side": args.large_side,
                "platform": platform.platform(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

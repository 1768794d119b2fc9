"""Per-request serving overhead at concurrency 1, before and after a change, in one run.

    python -m benchmarks.overhead [--before HEAD] [--before-without httptools uvloop]
        [--rounds 6] [--requests 40] [--side 256] [--concurrency 1] [--calibrate 0]

Runs two services side by side on the same machine: "before" from a clean export of the git
revision `--before` (default HEAD), "after" from the working tree. Both serve the same model;
they take turns, block by block, so that whatever else the machine is doing hits both alike.
For each it reports the mean request latency at concurrency 1, the engine's forward pass for
those requests (from `/metrics`), and the overhead: latency minus forward pass, in ms and as a
fraction of the pass. `--before-without` hides installed modules from the "before" service, to
measure a change that adds a dependency; `--after-env` sets environment variables for the "after"
service only, to measure a setting. The after/before ratios are the figures to quote for a
change. `--concurrency N` drives each block with N requests in flight (throughput, as
`images_per_s`); `--calibrate N` first activates a calibration on N synthetic images in both
services, so that work done only with an active calibration (drift watching) is measured. Prints
one JSON object on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import subprocess
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np

from benchmarks.launch import log, server
from benchmarks.load import drive_with_engine_view
from benchmarks.serve import DEFAULT_CHECKPOINT, prepare_models, synthetic_pngs

ROOT = Path(__file__).resolve().parent.parent


def export_revision(revision: str, folder: Path) -> str:
    """Write the tracked files of git `revision` into `folder`; returns its commit hash."""
    commit = subprocess.run(
        ["git", "rev-parse", "--verify", f"{revision}^{{commit}}"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit], cwd=ROOT, check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return commit


Block = tuple[float, int, float, float]


def block(url: str, model: str, pngs: list[bytes], requests: int, concurrency: int = 1) -> Block:
    """(mean latency ms, requests, engine forward ms per pass, images per s) of one block."""
    result = drive_with_engine_view(url, model, pngs, concurrency, requests, 600)
    if result["failed"]:
        raise RuntimeError(f"{url}: {result['failed']} failed requests: {result['statuses']}")
    return (
        result["mean_ms"],
        result["requests"],
        result["forward_ms_per_pass"],
        result["images_per_s"],
    )


def figures(blocks: list[Block]) -> dict[str, float]:
    """Mean latency, forward pass, the overhead between them and throughput, over every block."""
    mean, count, forward_ms, rate = (
        np.array(column, dtype=float) for column in zip(*blocks, strict=True)
    )
    latency = float((mean * count).sum() / count.sum())
    forward = float((forward_ms * count).sum() / count.sum())
    return {
        "mean_ms": latency,
        "forward_ms": forward,
        "overhead_ms": latency - forward,
        "overhead_fraction_of_forward": latency / forward - 1,
        # Total images over total time: each block's time is its count over its rate.
        "images_per_s": float(count.sum() / (count / rate).sum()),
    }


def calibrate(url: str, model: str, side: int, images: int) -> None:
    """Start a calibration of `model` on `images` synthetic images and wait until it is active."""
    pngs = synthetic_pngs(side, images, seed=1)
    masks = synthetic_pngs(side, images, seed=1, masks=True)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for i, (image, mask) in enumerate(zip(pngs, masks, strict=True)):
            archive.writestr(f"images/{i:04d}.png", image)
            archive.writestr(f"masks/{i:04d}.png", mask)
    files = {"dataset": ("calibration.zip", buffer.getvalue(), "application/zip")}
    started = httpx.post(f"{url}/v1/models/{model}/calibrations", files=files, timeout=60)
    started.raise_for_status()
    deadline = time.monotonic() + 600
    while (job := httpx.get(url + started.headers["location"]).json())["status"] in (
        "queued",
        "running",
    ):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url}: calibration did not finish")
        time.sleep(0.2)
    if not job["active"]:
        raise RuntimeError(f"{url}: calibration not active: {job.get('error')}")


def main() -> None:
    """Run the A/B and print its JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default="HEAD", help="git revision to compare against")
    parser.add_argument(
        "--before-without", nargs="*", default=[], metavar="MODULE", help="hide from before"
    )
    parser.add_argument(
        "--after-env", nargs="*", default=[], metavar="KEY=VALUE", help="set for after only"
    )
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--requests", type=int, default=40, help="per block")
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=1, help="requests in flight")
    parser.add_argument(
        "--calibrate", type=int, default=0, metavar="N", help="activate a calibration first"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="unet-ab-") as tmp:
        workdir = Path(tmp)
        models = workdir / "models"
        models.mkdir()
        model, _ = prepare_models(args.checkpoint, models)
        old_tree = workdir / "before"
        commit = export_revision(args.before, old_tree)
        pngs = synthetic_pngs(args.side, 16)
        hidden = workdir / "hidden"
        hidden.mkdir()
        for module in args.before_without:
            (hidden / f"{module}.py").write_text(f"raise ImportError('{module}: hidden')\n")
        sources = {"before": old_tree, "after": ROOT}
        blocks: dict[str, list[Block]] = {name: [] for name in sources}
        with contextlib.ExitStack() as stack:
            urls = {}
            for name, source in sources.items():
                env = {
                    "UNET_MODEL_DIR": str(models),
                    "UNET_STATE_DIR": str(workdir / f"state-{name}"),
                    "UNET_LOG_LEVEL": "warning",
                }
                if name == "before" and args.before_without:
                    env["PYTHONPATH"] = str(hidden)
                if name == "after":
                    env.update(item.split("=", 1) for item in args.after_env)
                urls[name], _ = stack.enter_context(server(env, workdir, source))
            for url in urls.values():
                if args.calibrate:
                    calibrate(url, model, args.side, args.calibrate)
                block(url, model, pngs, 10)  # warm the connection path and caches
            for round_ in range(args.rounds):
                # Alternate who goes first, so neither always follows the other's idle spin.
                order = list(urls) if round_ % 2 == 0 else list(reversed(urls))
                for name in order:
                    figures_ = block(urls[name], model, pngs, args.requests, args.concurrency)
                    blocks[name].append(figures_)
                    mean, _, forward, rate = figures_
                    log(
                        f"round {round_ + 1}/{args.rounds} {name}: "
                        f"{mean:.1f} ms per request, forward {forward:.1f} ms, "
                        f"{rate:.1f} images/s"
                    )

    results = {name: figures(blocks[name]) for name in sources}
    old, new = results["before"], results["after"]
    print(
        json.dumps(
            {
                "before": {
                    "revision": args.before,
                    "commit": commit,
                    "without": args.before_without,
                    **old,
                },
                "after": {"revision": "working tree", "env": args.after_env, **new},
                "ratios_after_over_before": {
                    key: new[key] / old[key]
                    for key in ("mean_ms", "forward_ms", "overhead_ms", "images_per_s")
                },
                "concurrency": args.concurrency,
                "calibration_images": args.calibrate,
                "requests_per_variant": args.rounds * args.requests,
                "image_side": args.side,
                "platform": platform.platform(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

"""The seeds' claims about activations, measured: hidden activations and output heads on one task.

Trains the same U-Net on the same synthetic data with the same budget once per training seed for
each hidden activation (head fixed to sigmoid) and each output head (hidden ReLU); ReLU + sigmoid
belongs to both sweeps and is trained once. Each model is calibrated (`f1`, the project's default)
on a validation set and scored on a separate test set. Per epoch the dead-unit fraction, mean and
spread of every hidden layer are recorded on the validation set. One JSON object goes to stdout
(and `--out`); progress goes to stderr. `--plots DIR --from FILE` draws the figures of
docs/activations.md from a saved JSON without training anything, `--tables` its tables.

Run from the repository root: `python benchmarks/activations.py [--quick] [--out FILE]` (or
`python -m benchmarks.activations`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.activation_report import tables, write_plots
from model.calibration import Criterion, ScoreHistogram
from model.calibration.reliability import calibration_quality
from model.cards.checkpoint import load_checkpoint
from model.data.datasets import iter_pairs
from model.data.synth import write_dataset
from model.inference.calibrate import calibrate_model
from model.inference.predict import predict
from model.network.activations import ACTIVATIONS
from model.network.heads import HEADS
from model.network.unet import UNet, UNetConfig
from model.training.activation_stats import HiddenActivationStats
from model.training.evaluate import evaluate_model
from model.training.train import TrainConfig, train

# Data seeds of their own: 1 and 2 made the shipped weights, 1001 and 1002 the accuracy benchmark.
TRAIN_SEED, VAL_SEED, TEST_SEED = 3001, 3002, 3003
DEFAULT_HIDDEN, DEFAULT_HEAD = "relu", "sigmoid"
STRATEGY = "f1"  # pixel F1 is Dice: the project's default calibration strategy
Pairs = list[tuple[str, np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Budget:
    """What every run of the study gets: the same data, network size and epochs."""

    size: int = 80
    n_train: int = 192
    n_val: int = 32
    n_test: int = 48
    epochs: int = 12
    base_channels: int = 8
    depth: int = 3
    batch_size: int = 16
    seeds: tuple[int, ...] = (0, 1, 2)


QUICK = Budget(
    size=32, n_train=16, n_val=4, n_test=4, epochs=2, base_channels=4, depth=2, seeds=(0,)
)


def combinations() -> list[tuple[str, str]]:
    """(hidden activation, head) pairs of both sweeps, the shared ReLU + sigmoid pair once."""
    pairs = [(activation, DEFAULT_HEAD) for activation in ACTIVATIONS]
    pairs += [(DEFAULT_HIDDEN, head) for head in HEADS if head != DEFAULT_HEAD]
    return pairs


class EpochRecorder:
    """The `on_epoch` callback: time per epoch and hidden-layer statistics on the validation set."""

    def __init__(self, val: Pairs) -> None:
        self.val = val
        self.epochs: list[dict[str, Any]] = []
        self._mark = time.perf_counter()

    def __call__(self, epoch: int, network: UNet) -> None:
        """Record epoch `epoch`; the time spent here is left out of the next epoch's time."""
        seconds = time.perf_counter() - self._mark
        stats = HiddenActivationStats()
        network.eval()
        with torch.inference_mode(), stats.watch(network):
            for _, image, _ in self.val:
                network.logits(torch.from_numpy(image)[None])
        layers = stats.summary()
        self.epochs.append({"epoch": epoch, "seconds": round(seconds, 3), **pooled(layers)})
        self.epochs[-1]["layers"] = [
            {k: row[k] for k in ("layer", "units", "dead_fraction", "sparsity", "mean", "std")}
            for row in layers
        ]
        self._mark = time.perf_counter()


def pooled(layers: list[dict[str, Any]]) -> dict[str, float]:
    """Dead fraction over all units; sparsity, mean and spread averaged over the layers."""
    units = sum(row["units"] for row in layers)
    return {
        "dead_fraction": round(sum(row["dead_units"] for row in layers) / units, 6),
        "sparsity": round(statistics.fmean(row["sparsity"] for row in layers), 6),
        "activation_mean": round(statistics.fmean(row["mean"] for row in layers), 6),
        "activation_std": round(statistics.fmean(row["std"] for row in layers), 6),
    }


def clipped_quality(network: UNet, pairs: Pairs) -> dict[str, Any]:
    """Brier and ECE of a head's output clipped to [0, 1], read as if it were a probability."""
    hist = ScoreHistogram("probability", n_bootstrap=0)
    for _, image, mask in pairs:
        hist.update(np.clip(predict(network, image).output, 0.0, 1.0), mask)
    brier, ece, table = calibration_quality(hist)
    return {"brier": brier, "ece": ece, "reliability": table}


def run_one(
    activation: str, head: str, seed: int, budget: Budget, data: Path, val: Pairs, test: Pairs
) -> dict[str, Any]:
    """Train, calibrate on `val` and score on `test` one (activation, head, seed) combination."""
    architecture = UNetConfig(
        out_channels=2 if head == "softmax" else 1,
        depth=budget.depth,
        base_channels=budget.base_channels,
        activation=activation,
        head=head,
    )
    config = TrainConfig(
        epochs=budget.epochs, batch_size=budget.batch_size, seed=seed, device="cpu"
    )
    recorder = EpochRecorder(val)
    out = data / "runs" / f"{activation}-{head}-{seed}.safetensors"
    result = train(
        architecture, data / "train", out, config, data / "val", progress=False, on_epoch=recorder
    )
    network, _ = load_checkpoint(result.checkpoint)
    report = calibrate_model(network, val, Criterion(STRATEGY)).to_dict()
    calibrated = evaluate_model(network, test, report["threshold"], "calibrated on validation")
    fixed = evaluate_model(network, test, 0.5, "conventional 0.5")
    epochs = recorder.epochs
    row: dict[str, Any] = {
        "activation": activation,
        "head": head,
        "seed": seed,
        "threshold": report["threshold"],
        "dice_calibrated": calibrated["dice"],
        "dice_at_0.5": fixed["dice"],
        "auc": calibrated["auc"],
        "best_epoch": result.best_epoch,
        "seconds_per_epoch": round(statistics.fmean(e["seconds"] for e in epochs), 3),
        "final": pooled(calibrated["activations"]["hidden"]),
        # Saturated / exactly-0 / exactly-1 shares of the head's output on the test set.
        "head_output": calibrated["activations"]["head"],
        "max_dead_fraction": max(e["dead_fraction"] for e in epochs),
        "calibration": {
            key: report[key] for key in ("tied_at_min_fraction", "is_probability", "brier", "ece")
        }
        | {"validation_auc": report["auc"], "reliability": report["reliability"]},
        "epochs": epochs,
    }
    if head == "relu":
        # Not in the calibration report: whether MSE made the clipped ReLU output a probability.
        row["clipped_to_unit"] = clipped_quality(network, val)
    return row


def spread(values: list[float | None]) -> dict[str, float | None]:
    """Mean and sample standard deviation over seeds (None where undefined)."""
    present = [v for v in values if v is not None]
    if not present:
        return {"mean": None, "sd": None}
    sd = statistics.stdev(present) if len(present) > 1 else 0.0
    return {"mean": round(statistics.fmean(present), 6), "sd": round(sd, 6)}


SUMMARISED = {
    "dice_calibrated": lambda r: r["dice_calibrated"],
    "dice_at_0.5": lambda r: r["dice_at_0.5"],
    "auc": lambda r: r["auc"],
    "dead_fraction": lambda r: r["final"]["dead_fraction"],
    "max_dead_fraction": lambda r: r["max_dead_fraction"],
    "activation_mean": lambda r: r["final"]["activation_mean"],
    "activation_std": lambda r: r["final"]["activation_std"],
    "seconds_per_epoch": lambda r: r["seconds_per_epoch"],
    "tied_at_min_fraction": lambda r: r["calibration"]["tied_at_min_fraction"],
    "brier": lambda r: r["calibration"]["brier"],
    "ece": lambda r: r["calibration"]["ece"],
}


def summary_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One table row: every summarised figure as mean and spread over the seeds of `runs`."""
    row: dict[str, Any] = {
        "activation": runs[0]["activation"],
        "head": runs[0]["head"],
        "n_seeds": len(runs),
        "is_probability": runs[0]["calibration"]["is_probability"],
    }
    for name, pick in SUMMARISED.items():
        row[name] = spread([pick(r) for r in runs])
    return row


def select(runs: list[dict[str, Any]], activation: str, head: str) -> list[dict[str, Any]]:
    """The runs (one per seed) of one (activation, head) combination."""
    return [r for r in runs if r["activation"] == activation and r["head"] == head]


def machine() -> dict[str, Any]:
    """The CPU this ran on, as `lscpu` names it, and the torch build."""
    model = platform.processor() or "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": model,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def study(budget: Budget, work: Path, quick: bool) -> dict[str, Any]:
    """Every run of the study and its two tables, as one JSON-ready dict."""
    started = time.perf_counter()
    load_before = round(os.getloadavg()[0], 2)
    for name, n, seed in (
        ("train", budget.n_train, TRAIN_SEED),
        ("val", budget.n_val, VAL_SEED),
        ("test", budget.n_test, TEST_SEED),
    ):
        write_dataset(work / name, n=n, seed=seed, size=budget.size)
    val, test = list(iter_pairs(work / "val")), list(iter_pairs(work / "test"))
    jobs = [(a, h, s) for a, h in combinations() for s in budget.seeds]
    runs = []
    bar = tqdm(jobs, desc="activations", file=sys.stderr)
    for activation, head, seed in bar:
        bar.set_postfix_str(f"{activation}/{head} seed {seed}")
        runs.append(run_one(activation, head, seed, budget, work, val, test))

    return {
        "benchmark": "activations",
        "quick": quick,
        "command": " ".join(["python -m benchmarks.activations", *sys.argv[1:]]),
        "budget": asdict(budget)
        | {"seeds": list(budget.seeds), "data_seeds": [TRAIN_SEED, VAL_SEED, TEST_SEED]},
        "strategy": STRATEGY,
        "machine": machine(),
        "wall_seconds": round(time.perf_counter() - started, 1),
        # The machine may be shared: the 1-minute load average when the study started and ended.
        "load_average": [load_before, round(os.getloadavg()[0], 2)],
        "activations": [summary_row(select(runs, a, DEFAULT_HEAD)) for a in ACTIVATIONS],
        "heads": [summary_row(select(runs, DEFAULT_HIDDEN, h)) for h in HEADS],
        "runs": runs,
    }


def budget(args: argparse.Namespace) -> Budget:
    """The quick or the full budget, with any size, image count, epochs or width overridden."""
    base = QUICK if args.quick else Budget()
    changes = {
        name: getattr(args, name)
        for name in ("size", "n_train", "epochs", "base_channels")
        if getattr(args, name) is not None
    }
    return replace(base, **changes)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """Run the study (or draw its figures from a saved JSON) and print the JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a tiny budget, for CI (minutes)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--plots", type=Path, help="write the figures (PNG) into this folder")
    parser.add_argument("--tables", action="store_true", help="print the Markdown tables")
    parser.add_argument(
        "--threads", type=int, help="torch threads (1 wastes no CPU spinning on a busy machine)"
    )
    for name in ("size", "n_train", "epochs", "base_channels"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, help=f"override the {name}")
    parser.add_argument("--from", dest="source", type=Path, help="read this JSON, train nothing")
    args = parser.parse_args(argv)
    if args.source is not None:
        if args.plots is None and not args.tables:
            parser.error("--from needs --plots DIR or --tables")
        result = json.loads(args.source.read_text())
    else:
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        with tempfile.TemporaryDirectory() as work:
            result = study(budget(args), Path(work), args.quick)
        text = json.dumps(result, allow_nan=False)
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text + "\n")
        print(text)
    if args.plots is not None:
        for path in write_plots(result, args.plots):
            print(f"wrote {path}", file=sys.stderr)
    if args.tables:
        # stdout holds the JSON when this run trained; the tables then go beside the progress.
        print(tables(result), file=sys.stdout if args.source else sys.stderr)
    return result


if __name__ == "__main__":
    main()

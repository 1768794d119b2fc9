"""The model's commands: synth, train, evaluate, calibrate and make-weights.

`add_commands` puts them on any argparse sub-command set, so the `unet` script (service/cli.py)
offers them next to `serve`; `python -m model.cli COMMAND` runs them without the service.
Each handler imports its own work, so building the parser stays cheap.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from model.cards.command import add_import_export, add_quantize
from model.inference.instances_cli import add_instances
from model.network.activations import ACTIVATIONS
from model.network.blocks import NORMS
from model.network.heads import HEADS

DESCRIPTION = (
    "The model's commands: synth, train, evaluate, calibrate, make-weights, import, export, "
    "quantize."
)
EXIT_USAGE = 2  # bad input, like argparse's own usage errors
EXIT_INTERRUPTED = 130  # the shell's code for Ctrl-C
EXIT_BLOCKED = 3  # `calibrate --strict`: the report carries a blocking warning

Handler = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m model.cli`."""
    parser = argparse.ArgumentParser(prog="python -m model.cli", description=DESCRIPTION)
    add_commands(parser.add_subparsers(required=True, metavar="COMMAND"))
    return run(parser, argv)


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse `argv`, run the chosen command and return its exit code."""
    args = parser.parse_args(argv)
    command: Handler = args.command
    try:
        return command(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except (ValueError, FileNotFoundError) as error:
        # Every input problem surfaces as one line naming the file and the fix, never a traceback.
        print(f"{parser.prog} {args.name}: error: {error}", file=sys.stderr)
        return EXIT_USAGE


def add_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    handler: Handler,
    help: str,
    *,
    json_option: bool = True,
) -> argparse.ArgumentParser:
    """A sub-command that runs `handler`; with `json_option`, it takes `--json`."""
    sub = commands.add_parser(name, help=help, description=help)
    sub.set_defaults(command=handler, name=name)
    if json_option:
        sub.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    return sub


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add synth, train, evaluate, calibrate and make-weights to `commands`."""
    synth = add_command(commands, "synth", _synth, "write a synthetic microscopy-like data set")
    synth.add_argument("--out", type=Path, required=True, help="folder to create images/ masks/ in")
    synth.add_argument("--n", type=int, required=True, help="number of images")
    synth.add_argument("--seed", type=int, required=True, help="seed; same seed, same images")
    synth.add_argument("--size", type=int, default=128, help="side in pixels (default 128)")
    synth.add_argument(
        "--classes",
        type=_names,
        help="comma-separated classes (nucleus,debris): write label-image masks, 0 background "
        "and k for the k-th class, instead of binary ones",
    )
    synth.add_argument("--instances", action="store_true", help="also write 16-bit instances/")

    train = add_command(commands, "train", _train, "train a U-Net and write a checkpoint")
    train.add_argument("--data", type=Path, required=True, help="data set: images/ + masks/")
    train.add_argument("--out", type=Path, required=True, help="checkpoint path (NAME.safetensors)")
    train.add_argument("--val", type=Path, help="validation set (default: hold out 10%% of --data)")
    train.add_argument("--head", choices=HEADS, default="sigmoid")
    train.add_argument("--activation", choices=ACTIVATIONS, default="relu")
    train.add_argument("--norm", choices=NORMS, default="batch")
    train.add_argument("--depth", type=int, default=3)
    train.add_argument("--base-channels", type=int, default=16)
    train.add_argument("--in-channels", type=int, default=1)
    train.add_argument("--epochs", type=int, default=20)
    train.add_argument("--batch-size", type=int, default=16)
    train.add_argument("--lr", type=float, default=3e-3)
    train.add_argument("--dice-weight", type=float, default=0.0, help="add soft Dice to the loss")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    train.add_argument(
        "--normalize",
        choices=("dtype", "minmax", "percentile", "zscore"),
        default="dtype",
        help="input normalisation, recorded in the card (percentile: 1 and 99.8)",
    )

    evaluate = add_command(
        commands, "evaluate", _evaluate, "Dice, IoU, AUC and activation statistics"
    )
    evaluate.add_argument("--checkpoint", type=Path, required=True)
    evaluate.add_argument("--data", type=Path, required=True)
    evaluate.add_argument("--threshold", type=float, help="default: the checkpoint's own")
    evaluate.add_argument(
        "--class-threshold",
        action="append",
        type=_class_threshold,
        metavar="CLASS=VALUE",
        help="a multi-class model's threshold for one class (repeat for each; default: the "
        "checkpoint's own, or --threshold for every class)",
    )

    calibrate = add_command(
        commands, "calibrate", _calibrate, "pick a threshold from the ROC curve"
    )
    calibrate.add_argument("--checkpoint", type=Path, required=True)
    calibrate.add_argument("--data", type=Path, required=True)
    calibrate.add_argument(
        "--strategy", default="f1", help="how the threshold is chosen (default: f1, i.e. Dice)"
    )
    calibrate.add_argument("--target", type=float, help="target_* rate; fnr/fdr_control alpha")
    calibrate.add_argument("--delta", type=float, help="fdr_control: 1 - the confidence")
    calibrate.add_argument("--recalibrate", choices=("temperature", "platt", "isotonic"))
    calibrate.add_argument("--cost-fp", type=float, default=1.0, help="cost of a false positive")
    calibrate.add_argument("--cost-fn", type=float, default=1.0, help="cost of a false negative")
    calibrate.add_argument("--plot", type=Path, help="also write the ROC curve as a PNG here")
    calibrate.add_argument(
        "--strict",
        action="store_true",
        help=f"exit {EXIT_BLOCKED} when a warning has severity block (the service would refuse "
        "to activate the threshold)",
    )

    _add_make_weights(commands)
    add_import_export(commands, add_command)
    add_quantize(commands, add_command)
    add_instances(commands, add_command)


def _add_make_weights(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    weights = add_command(
        commands,
        "make-weights",
        _make_weights,
        "reproduce the shipped checkpoints in model/weights (trains for many minutes on CPU; "
        "--calibrate-only redoes just their default thresholds)",
    )
    weights.add_argument("--work", type=Path, default=Path("runs/weights"), help="scratch folder")
    weights.add_argument("--out", type=Path, help="where the checkpoints go (model/weights)")
    weights.add_argument("--n-train", type=int, default=384)
    weights.add_argument("--n-val", type=int, default=64)
    weights.add_argument("--epochs", type=int, default=12)
    weights.add_argument(
        "--heads",
        nargs="+",
        choices=(*HEADS, "multiclass"),
        default=["sigmoid", "relu", "multiclass"],
        metavar="HEAD",
        help="binary heads to train, and multiclass for unet-multiclass (default: all three)",
    )
    weights.add_argument("--strategy", default="f1", help="how the default threshold is chosen")
    weights.add_argument(
        "--calibrate-only", action="store_true", help="keep the weights, redo the thresholds"
    )


def _synth(args: argparse.Namespace) -> int:
    from model.data.synth import write_dataset

    classes, size = args.classes, args.size
    kinds = {"classes": classes, "instances": args.instances}
    write_dataset(args.out, n=args.n, seed=args.seed, size=size, progress=not args.json, **kinds)
    written = {"out": str(args.out), "n": args.n, "seed": args.seed, "size": args.size}
    written |= {"instances": str(args.out / "instances")} if args.instances else {}
    emit(args, written | ({"classes": classes} if classes is not None else {}))
    return 0


def _names(text: str) -> list[str]:
    """A comma-separated list of names, spaces around them dropped."""
    return [name.strip() for name in text.split(",") if name.strip()]


def _train(args: argparse.Namespace) -> int:
    from model.network.unet import UNetConfig
    from model.training.train import TrainConfig, train

    architecture = UNetConfig(
        in_channels=args.in_channels,
        depth=args.depth,
        base_channels=args.base_channels,
        activation=args.activation,
        head=args.head,
        norm=args.norm,
        out_channels=2 if args.head == "softmax" else 1,
    )
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        dice_weight=args.dice_weight,
        seed=args.seed,
        device=args.device,
        normalize={"method": args.normalize},
    )
    result = train(architecture, args.data, args.out, config, args.val, progress=not args.json)
    best = result.val_dice[result.best_epoch - 1] if result.val_dice else None
    emit(
        args,
        {"checkpoint": str(result.checkpoint), "best_epoch": result.best_epoch, "val_dice": best},
    )
    return 0


def _multi_class(card: Path) -> bool:
    """Whether the card (or checkpoint) at `card` is a multilabel or multiclass model."""
    from model.cards.card import load_card

    return load_card(card).output.mode != "binary"


def _class_threshold(text: str) -> tuple[str, float]:
    """`NAME=VALUE` as (name, value)."""
    name, sep, value = text.partition("=")
    try:
        if not sep or not name.strip():
            raise ValueError
        return name.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give CLASS=VALUE, e.g. nucleus=0.4") from None


def _evaluate(args: argparse.Namespace) -> int:
    from model.training.evaluate import evaluate_checkpoint

    if _multi_class(args.checkpoint):
        return _evaluate_classes(args)
    report = evaluate_checkpoint(args.checkpoint, args.data, args.threshold, progress=not args.json)
    emit(args, report)
    return 0


def _evaluate_classes(args: argparse.Namespace) -> int:
    from model.cards.card import load_card
    from model.inference.classes import evaluate_class_checkpoint

    thresholds = None
    if args.threshold is not None or args.class_threshold:
        classes = load_card(args.checkpoint).output.class_names
        thresholds = dict.fromkeys(classes, args.threshold) if args.threshold is not None else {}
        thresholds |= dict(args.class_threshold or [])
    report = evaluate_class_checkpoint(
        args.checkpoint, args.data, thresholds, progress=not args.json
    )
    emit(args, report)
    if not args.json:
        for rule, dice in report["dice"].items():
            each = ", ".join(f"{name} {value:.4f}" for name, value in dice["per_class"].items())
            print(f"dice ({rule}): macro {dice['macro']:.4f}; {each}")
        for name, auc in report["auc"].items():
            print(f"{name}: threshold {report['thresholds'][name]:.4g}, AUC {auc:.4f}")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from model.calibration import Criterion
    from model.calibration.conformal import describe_guarantee
    from model.calibration.recalibration import describe_recalibration as describe
    from model.inference.calibrate import calibrate_checkpoint

    criterion = Criterion(args.strategy, args.target, args.cost_fp, args.cost_fn, args.delta)
    if _multi_class(args.checkpoint):
        return _calibrate_classes(args, criterion)
    progress, recalibrate = not args.json, args.recalibrate
    report = calibrate_checkpoint(args.checkpoint, args.data, criterion, progress, recalibrate)
    if args.plot:
        from model.calibration.plots import roc_png

        args.plot.write_bytes(roc_png(report))
    emit(args, report.to_dict())
    if not args.json:  # the guarantee and the recalibration in words, under the summary
        for line in describe_guarantee(report.guarantee) + describe(report.recalibration):
            print(line)
    # On stderr, so that --json keeps stdout to the one JSON object.
    for warning in report.warnings:
        print(f"{warning.severity}: {warning.code}: {warning.message}", file=sys.stderr)
    return EXIT_BLOCKED if args.strict and report.blocking else 0


def _calibrate_classes(args: argparse.Namespace, criterion: Any) -> int:
    from model.inference.classes import calibrate_class_checkpoint

    report = calibrate_class_checkpoint(
        args.checkpoint, args.data, criterion, progress=not args.json
    )
    if args.plot:
        from model.calibration.plots import roc_png

        for name, one in report.classes.items():
            args.plot.with_name(f"{args.plot.stem}-{name}{args.plot.suffix}").write_bytes(
                roc_png(one)
            )
    emit(args, report.to_dict())
    if not args.json:
        for name, one in report.classes.items():
            point = one.chosen
            print(
                f"{name}: threshold {one.threshold:.4g} ({one.strategy}), AUC {one.auc:.4f}, "
                f"Dice {point.f1:.4f}, TPR {point.tpr:.4f}, FPR {point.fpr:.4g}"
            )
        for rule, dice in report.summary.dice.items():
            each = ", ".join(f"{name} {value:.4f}" for name, value in dice.per_class.items())
            note = "" if dice.exact else " (estimated on the grid)"
            print(f"dice ({rule}): macro {dice.macro:.4f}; {each}{note}")
        if report.summary.argmax_disagreement is not None:
            share = report.summary.argmax_disagreement
            print(f"pixels where the calibrated rule and argmax disagree: {share:.4%}")
    for name, one in report.classes.items():
        for warning in one.warnings:
            print(f"{warning.severity}: {name}: {warning.code}: {warning.message}", file=sys.stderr)
    return EXIT_BLOCKED if args.strict and report.blocking else 0


def _make_weights(args: argparse.Namespace) -> int:
    from model.calibration import Criterion
    from model.training.make_weights import WEIGHTS, WeightsPlan, make_weights

    out = args.out or WEIGHTS
    plan = WeightsPlan(
        work=args.work,
        out=out,
        n_train=args.n_train,
        n_val=args.n_val,
        epochs=args.epochs,
        heads=tuple(args.heads),
        criterion=Criterion(args.strategy),
        calibrate_only=args.calibrate_only,
    )
    thresholds = make_weights(plan, progress=not args.json)
    if not args.json:
        for name, threshold in thresholds.items():
            print(f"{name}: threshold {threshold:.4g} ({args.strategy})")
    emit(args, {"out": str(out), "strategy": args.strategy, "thresholds": thresholds})
    return 0


def emit(args: argparse.Namespace, result: dict[str, Any]) -> None:
    """`--json`: one JSON object on stdout and nothing else; otherwise a readable summary."""
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        if not isinstance(value, dict | list):
            print(f"{key}: {value}")


if __name__ == "__main__":
    sys.exit(main())

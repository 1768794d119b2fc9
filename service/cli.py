"""The `unet` command line: synth, train, evaluate, calibrate, serve."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from model.activations import ACTIVATIONS
from model.blocks import NORMS
from model.heads import HEADS

EXIT_USAGE = 2  # bad input, like argparse's own usage errors


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `unet` console script."""
    args = _parser().parse_args(argv)
    command: Callable[[argparse.Namespace], int] = args.command
    try:
        return command(args)
    except KeyboardInterrupt:
        return 130
    except (ValueError, FileNotFoundError) as error:
        # Every input problem surfaces as one line naming the file and the fix, never a traceback.
        print(f"unet {args.name}: error: {error}", file=sys.stderr)
        return EXIT_USAGE


def _synth(args: argparse.Namespace) -> int:
    from model.synth import write_dataset

    write_dataset(args.out, n=args.n, seed=args.seed, size=args.size, progress=not args.json)
    _emit(args, {"out": str(args.out), "n": args.n, "seed": args.seed, "size": args.size})
    return 0


def _train(args: argparse.Namespace) -> int:
    from model.train import TrainConfig, train
    from model.unet import UNetConfig

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
    )
    result = train(architecture, args.data, args.out, config, args.val, progress=not args.json)
    best = result.val_dice[result.best_epoch - 1] if result.val_dice else None
    _emit(
        args,
        {"checkpoint": str(result.checkpoint), "best_epoch": result.best_epoch, "val_dice": best},
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from model.evaluate import evaluate_checkpoint

    report = evaluate_checkpoint(args.checkpoint, args.data, args.threshold, progress=not args.json)
    _emit(args, report)
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from model.calibrate import calibrate_checkpoint
    from model.calibration import Criterion

    criterion = Criterion(args.strategy, args.target, args.cost_fp, args.cost_fn)
    report = calibrate_checkpoint(args.checkpoint, args.data, criterion, progress=not args.json)
    if args.plot:
        from model.calibration.plots import roc_png

        args.plot.write_bytes(roc_png(report))
    _emit(args, report.to_dict())
    return 0


def _serve(args: argparse.Namespace) -> int:
    from service.__main__ import run

    run(host=args.host, port=args.port)
    return 0


def _emit(args: argparse.Namespace, result: dict[str, Any]) -> None:
    """`--json`: one JSON object on stdout and nothing else; otherwise a readable summary."""
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        if not isinstance(value, dict | list):
            print(f"{key}: {value}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unet", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(name: str, handler: Callable[[argparse.Namespace], int], help: str) -> Any:
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(command=handler, name=name)
        if name != "serve":
            sub.add_argument("--json", action="store_true", help="print one JSON object on stdout")
        return sub

    synth = command("synth", _synth, "write a synthetic microscopy-like data set")
    synth.add_argument("--out", type=Path, required=True, help="folder to create images/ masks/ in")
    synth.add_argument("--n", type=int, required=True, help="number of images")
    synth.add_argument("--seed", type=int, required=True, help="seed; same seed, same images")
    synth.add_argument("--size", type=int, default=128, help="side in pixels (default 128)")

    train = command("train", _train, "train a U-Net and write a checkpoint")
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

    evaluate = command("evaluate", _evaluate, "Dice, IoU, AUC and activation statistics")
    evaluate.add_argument("--checkpoint", type=Path, required=True)
    evaluate.add_argument("--data", type=Path, required=True)
    evaluate.add_argument("--threshold", type=float, help="default: the checkpoint's own")

    calibrate = command("calibrate", _calibrate, "pick a threshold from the ROC curve")
    calibrate.add_argument("--checkpoint", type=Path, required=True)
    calibrate.add_argument("--data", type=Path, required=True)
    calibrate.add_argument("--strategy", default="youden")
    calibrate.add_argument(
        "--target", type=float, help="for target_tpr/target_fpr/target_precision"
    )
    calibrate.add_argument("--cost-fp", type=float, default=1.0, help="cost of a false positive")
    calibrate.add_argument("--cost-fn", type=float, default=1.0, help="cost of a false negative")
    calibrate.add_argument("--plot", type=Path, help="also write the ROC curve as a PNG here")

    serve = command("serve", _serve, "run the HTTP service")
    serve.add_argument("--host", help="default: UNET_HOST or 127.0.0.1")
    serve.add_argument("--port", type=int, help="default: UNET_PORT or 8000")
    return parser


if __name__ == "__main__":
    sys.exit(main())

"""The card commands' arguments and handlers: `unet import`, `unet export`, `unet quantize`.

The work is in `model.cards.importing`, `model.cards.export` and `model.cards.quantize`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from model.errors import QuantizationError
from model.network.heads import HEADS


def add_quantize(commands: Any, add_command: Callable[..., argparse.ArgumentParser]) -> None:
    """Add `quantize` to `commands` (argparse sub-commands) with the CLI's `add_command`."""
    sub = add_command(
        commands,
        "quantize",
        quantize,
        "quantise a native checkpoint or an ONNX card to INT8 with ONNX Runtime, behind an "
        "accuracy gate on held-out images",
    )
    sub.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint or ONNX card")
    sub.add_argument(
        "--data",
        type=Path,
        required=True,
        help="images/ and masks/: the first 16 calibrate the quantiser, the rest judge it",
    )
    sub.add_argument("--out", type=Path, help="the INT8 file (default: NAME-int8.onnx beside it)")
    sub.add_argument(
        "--accept-loss",
        action="store_true",
        help="write the model even when its AUC or Dice falls by more than 0.005",
    )


def quantize(args: argparse.Namespace) -> int:
    """Quantise, print the gate's figures; a refusal raises QuantizationError (exit 2)."""
    from model.cards.quantize import quantize_card

    card, report = quantize_card(args.checkpoint, args.data, args.out, accept_loss=args.accept_loss)
    figures = report.to_dict()
    if args.json:
        print(json.dumps({"card": None if card is None else str(card), "gate": figures}))
    else:
        print(_table(figures), file=sys.stdout if card else sys.stderr)
    if card is None:
        raise QuantizationError(report.refusal())
    if not args.json:
        print(f"card: {card}")
        if not report.passed:
            print("gate: refused, written anyway (--accept-loss)")
    return 0


def _table(figures: dict[str, Any]) -> str:
    """The gate's figures as a few readable lines."""
    fp32, int8 = figures["fp32"], figures["int8"]
    lines = [f"{'held-out images':<24}{figures['n_images']}", f"{'':<24}{'fp32':>10}{'int8':>10}"]
    for key, label in (
        ("auc", "AUC"),
        ("dice", f"Dice at {figures['threshold']:.4g}"),
        ("recalibrated_threshold", "re-calibrated threshold"),
        ("dice_recalibrated", "Dice there"),
    ):
        lines.append(f"{label:<24}{fp32[key]:>10.4f}{int8[key]:>10.4f}")
    lines.append(
        f"{'|p_int8 - p_fp32|':<24}max {figures['max_abs_diff']:.4f}, "
        f"mean {figures['mean_abs_diff']:.5f}"
    )
    return "\n".join(lines)


def add_import_export(commands: Any, add_command: Callable[..., argparse.ArgumentParser]) -> None:
    """Add `import` and `export` to `commands` with the CLI's `add_command`."""
    imp = add_command(
        commands,
        "import",
        _import,
        "write a model card for a network file (ONNX, TorchScript, .pt2, MONAI state dict) "
        "and test it on a synthetic image",
    )
    imp.add_argument("path", type=Path, help="the network file, or a folder holding one")
    imp.add_argument("--out", type=Path, help="the card to write (default: beside the file)")
    imp.add_argument("--format", choices=("monai", "torchscript", "exported", "onnx"))
    imp.add_argument("--network", help="MONAI: a class of monai.networks.nets, e.g. UNet")
    imp.add_argument("--args", default="{}", help="MONAI: its constructor's arguments as JSON")
    imp.add_argument("--channels", type=int, default=1, help="input channels (default 1)")
    imp.add_argument("--order", choices=("RGB", "BGR"), default="RGB")
    imp.add_argument(
        "--normalize",
        choices=("dtype", "minmax", "percentile", "zscore", "fixed"),
        default="dtype",
    )
    imp.add_argument("--low", type=float, default=1.0, help="percentile: lower (default 1)")
    imp.add_argument("--high", type=float, default=99.8, help="percentile: upper (default 99.8)")
    imp.add_argument("--mean", type=float, nargs="+", help="fixed: per-channel mean")
    imp.add_argument("--std", type=float, nargs="+", help="fixed: per-channel std")
    imp.add_argument("--emits", choices=("logits", "probabilities", "scores"), default="logits")
    imp.add_argument("--head", choices=HEADS, default="sigmoid", help="applied to logits")
    imp.add_argument("--channel", type=int, default=0, help="the foreground output channel")
    imp.add_argument("--pad-multiple", type=int, default=1, help="input sides must divide by it")
    imp.add_argument("--threshold", type=float, help="default threshold (else 0.5)")
    modes = ("binary", "multilabel", "multiclass")
    imp.add_argument("--mode", choices=modes, default="binary", help="output.mode of the card")
    imp.add_argument("--classes", help="multi-class: the class names in channel order, a,b,c")

    exp = add_command(
        commands, "export", _export, "export a native checkpoint, with a card to serve it by"
    )
    exp.add_argument("--checkpoint", type=Path, required=True)
    exp.add_argument("--format", choices=("onnx", "torchscript", "exported"), required=True)
    exp.add_argument("--out", type=Path, help="the file to write (default: beside the checkpoint)")


def _import(args: argparse.Namespace) -> int:
    """Write a card for a network file and try it; print what it found."""
    from model.cards.importing import import_model
    from model.cli import emit

    try:
        network_args = json.loads(args.args)
    except json.JSONDecodeError as error:
        raise ValueError(f"--args: not valid JSON ({error}); give an object") from None
    normalize: dict[str, Any] = {"method": args.normalize}
    if args.normalize == "percentile":
        normalize |= {"low": args.low, "high": args.high}
    if args.normalize == "fixed":
        normalize |= {"mean": args.mean, "std": args.std}
    source: dict[str, Any] = {"format": args.format} if args.format else {}
    if args.network:
        source["network"] = {"name": args.network, "args": network_args}
    card: dict[str, Any] = {
        "source": source,
        "input": {"channels": args.channels, "order": args.order, "normalize": normalize},
        "output": {"emits": args.emits, "channel": args.channel, "head": args.head},
        "pad_multiple": args.pad_multiple,
    }
    if args.threshold is not None:
        card["threshold"] = args.threshold
    if args.mode != "binary" or args.classes:
        names = [name.strip() for name in (args.classes or "").split(",") if name.strip()]
        card["output"] = {**card["output"], "mode": args.mode, "classes": names}
        del card["output"]["channel"]  # the classes' channels follow from the mode
    result = import_model(args.path, card, args.out)
    emit(args, result)
    if not args.json:
        low, high = result["output_range"]
        hint = result["suggested"]
        print(f"output range on a synthetic image: {low:.4g} .. {high:.4g}")
        print(f"suggested: emits {hint['emits']}, head {hint['head']}")
    return 0


def _export(args: argparse.Namespace) -> int:
    """Export a native checkpoint with its card."""
    from model.cards.export import SUFFIXES, export
    from model.cli import emit

    out = args.out or args.checkpoint.with_name(
        f"{args.checkpoint.stem}-{args.format}{SUFFIXES[args.format]}"
    )
    card = export(args.checkpoint, args.format, out)
    emit(args, {"file": str(out), "card": str(card), "format": args.format})
    return 0

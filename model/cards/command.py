"""`unet quantize`: the command's arguments and handler (the work is `model.cards.quantize`)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from model.errors import QuantizationError


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

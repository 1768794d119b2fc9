"""`unet export`: a native checkpoint as ONNX, TorchScript or a torch.export program, with its card.

What is exported is the U-Net's body (logits, no padding, no head): the card beside the file keeps
the checkpoint's input normalisation, head, pad_multiple and threshold, and the service pads to
`pad_multiple` and applies the head exactly as it does for the native checkpoint.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Literal

import torch

from model.cards.sources import load_predictor
from model.cards.sources.extras import require
from model.cards.sources.native import NativePredictor
from model.cards.to_onnx import Body, export_onnx
from model.errors import CardError

ExportFormat = Literal["onnx", "torchscript", "exported"]
SUFFIXES: dict[str, str] = {"onnx": ".onnx", "torchscript": ".pt", "exported": ".pt2"}
MAX_SIDE = 8192  # the largest side an exported program accepts (torch.export needs a bound)


def export(checkpoint: Path, fmt: ExportFormat, out: Path) -> Path:
    """Write the checkpoint's network to `out` in `fmt` and its card beside it; returns the card."""
    predictor = load_predictor(checkpoint)
    if not isinstance(predictor, NativePredictor):
        raise CardError(f"{checkpoint}: only native checkpoints export; this is another source")
    network = predictor.network.cpu().eval()
    multiple = network.multiple
    example = torch.rand(2, network.config.in_channels, 2 * multiple, 3 * multiple)
    body = Body(network).eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "torchscript":
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # deprecated, still widely used
            traced = torch.jit.trace(body, example)
            torch.jit.save(traced, str(out))
    elif fmt == "exported":
        batch = torch.export.Dim("batch", min=1, max=1024)
        rows = torch.export.Dim("rows", min=1, max=MAX_SIDE // multiple)
        cols = torch.export.Dim("cols", min=1, max=MAX_SIDE // multiple)
        shapes = {"x": {0: batch, 2: multiple * rows, 3: multiple * cols}}
        program = torch.export.export(body, (example,), dynamic_shapes=shapes)
        torch.export.save(program, str(out))
    else:
        require("onnx", "onnx", checkpoint, "onnx")
        export_onnx(network, out)
    card = predictor.card.model_dump(mode="json", exclude_none=True)
    card["source"] = {"format": fmt, "path": out.name}
    card_path = out.with_suffix(".json")
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    load_predictor(card_path)  # the export must serve: a test pass through its own card
    return card_path

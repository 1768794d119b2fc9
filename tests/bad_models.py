"""Hostile and broken models for the card and registry tests, built here (no downloads).

ONNX graphs are written with the `onnx` package (a default dependency); each takes `x`, float32
(N, 1, H, W).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from tests.helpers import write_card


def onnx_file(
    path: Path, nodes: list[Any], out_type: int = TensorProto.FLOAT, **constants: float
) -> str:
    """An ONNX model from `nodes` (input `x`, output `y`), with scalar float `constants`."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, "h", "w"])
    y = helper.make_tensor_value_info("y", out_type, ["n", 1, "h", "w"])
    initializers = [
        numpy_helper.from_array(np.array(value, dtype=np.float32), name)
        for name, value in constants.items()
    ]
    graph = helper.make_graph(nodes, path.stem, [x], [y], initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what the installed onnxruntime reads
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path.name


def zero_over_zero(folder: Path) -> str:
    """y = (x - x) / (x - x): NaN for every input."""
    nodes = [
        helper.make_node("Sub", ["x", "x"], ["d"]),
        helper.make_node("Div", ["d", "d"], ["y"]),
    ]
    return onnx_file(folder / "zero-over-zero.onnx", nodes)


def nan_at_side(folder: Path, side: int) -> str:
    """y = x, except NaN for inputs whose height is `side` (d / d with d = height - side)."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"], start=2, end=3),
        helper.make_node("Cast", ["shape"], ["height"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["height", "side"], ["d"]),
        helper.make_node("Div", ["d", "d"], ["one"]),  # 1, or NaN at that height
        helper.make_node("Mul", ["x", "one"], ["y"]),
    ]
    return onnx_file(folder / f"nan-at-{side}.onnx", nodes, side=float(side))


def affine(folder: Path, scale: float, shift: float) -> str:
    """y = scale * x + shift: for x in [0, 1), values in [shift, scale + shift)."""
    nodes = [
        helper.make_node("Mul", ["x", "scale"], ["scaled"]),
        helper.make_node("Add", ["scaled", "shift"], ["y"]),
    ]
    return onnx_file(folder / f"affine-{scale:g}-{shift:g}.onnx", nodes, scale=scale, shift=shift)


def integer_output(folder: Path, to: int) -> str:
    """y = x cast to an integer or boolean type (`to`: an onnx TensorProto type)."""
    nodes = [helper.make_node("Cast", ["x"], ["y"], to=to)]
    name = TensorProto.DataType.Name(to).lower()
    return onnx_file(folder / f"cast-{name}.onnx", nodes, out_type=to)


class Trap:
    """Unpickling this would create `marker`: proof of whether a loader ran pickled code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def pickled_pt(folder: Path, marker: Path) -> str:
    """A `.pt` whose pickle would run code: what `torch.load(weights_only=True)` refuses."""
    torch.save({"weight": torch.zeros(1), "trap": Trap(marker)}, str(folder / "pickled.pt"))
    return "pickled.pt"


def monai_card(folder: Path, name: str, weights: str) -> Path:
    """A MONAI UNet card reading `weights` as its state dict."""
    args = {"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "channels": [4, 8]}
    card = {
        "source": {
            "format": "monai",
            "path": weights,
            "network": {"name": "UNet", "args": args | {"strides": [2]}},
        },
        "pad_multiple": 2,
    }
    return write_card(folder, name, card)

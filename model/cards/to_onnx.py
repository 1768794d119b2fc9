"""Exporting a native U-Net's logits network to ONNX, for serving on ONNX Runtime.

The exported graph is `UNet.body` (`unet export` writes the same one): the network on an input
whose sides are already multiples of `UNet.multiple`, with dynamic batch, height and width. The
shape-dependent padding (reflect or replicate, by size) and the crop back stay with the caller,
and so does the head: the graph gives logits, which the model's own head turns into outputs as
the torch path does.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import warnings
from pathlib import Path

import torch
from torch import nn

from model.errors import ExportError
from model.network.unet import UNet

OPSET = 17
EXAMPLE_SIDE = 64  # any grid-aligned side; the axes are dynamic
INPUT_NAME, OUTPUT_NAME = "image", "logits"


class Body(nn.Module):
    """What an exporter traces: a U-Net's logits on grid-aligned input (no padding, no head)."""

    def __init__(self, network: UNet) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, K, H, W) of grid-aligned input (N, C, H, W)."""
        return self.network.body(x)


# torch's exporter keeps process-wide state (GLOBALS.in_onnx_export): two exports at once, say a
# second app's start-up while an earlier one's export still runs in its thread, fail each other
# ("GLOBALS.in_onnx_export must be False") and that model would fall back to torch. One at a time.
EXPORTING = threading.Lock()


def export_onnx(network: UNet, path: Path) -> Path:
    """Write `network`'s logits graph to `path` (atomically: a temporary file, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    side = max(EXAMPLE_SIDE, network.multiple)
    example = torch.zeros(1, network.config.in_channels, side, side)
    axes = {0: "batch", 2: "height", 3: "width"}
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".onnx", dir=path.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        # The TorchScript-based exporter needs no extra package and handles this network's ops;
        # its deprecation warning says nothing a user can act on.
        with EXPORTING, warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                Body(network).eval().cpu(),
                (example,),
                str(tmp),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes},
                opset_version=OPSET,
                dynamo=False,
            )
        tmp.replace(path)
    except Exception as error:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise ExportError(f"ONNX export failed: {type(error).__name__}: {error}") from error
    return path


def cached_export(network: UNet, digest: str, folder: Path) -> tuple[Path, bool]:
    """The ONNX file of the checkpoint with `digest` in `folder`: (path, whether it was made now).

    The file is named by the checkpoint's digest, so a changed checkpoint is exported afresh
    and an unchanged one is exported once, whatever restarts follow.
    """
    path = folder / f"{digest}.onnx"
    if path.is_file():
        return path, False
    return export_onnx(network, path), True

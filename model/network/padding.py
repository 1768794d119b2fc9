"""Padding an input to the sides a network needs, and where to crop its output back."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """`x` (..., H, W) padded to sides that are multiples of `multiple`, centred.

    Returns the padded tensor and the (top, left) offset of the input inside it, where a
    caller crops the output back.
    """
    height, width = x.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    top, left = pad_h // 2, pad_w // 2
    if pad_h == 0 and pad_w == 0:
        return x, (top, left)
    padding = (left, pad_w - left, top, pad_h - top)
    # Reflection keeps image statistics at the border but needs the pad smaller than the side;
    # tiny inputs (a few pixels) fall back to replicating the edge.
    mode = "reflect" if max(padding[:2]) < width and max(padding[2:]) < height else "replicate"
    return F.pad(x, padding, mode=mode), (top, left)

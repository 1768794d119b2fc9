"""The U-Net: encoder, decoder with named skip connections, and a configurable output head."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from model.network.activations import ACTIVATIONS
from model.network.blocks import NORMS, ConvBlock, Down, Up
from model.network.heads import HEADS, make_head
from model.network.padding import pad_to_multiple


@dataclass(frozen=True)
class UNetConfig:
    """The architecture of a U-Net; everything a checkpoint needs to rebuild it."""

    in_channels: int = 1
    out_channels: int = 1
    depth: int = 3
    base_channels: int = 16
    activation: str = "relu"
    head: str = "sigmoid"
    norm: str = "batch"

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; choose one of {ACTIVATIONS}")
        if self.head not in HEADS:
            raise ValueError(f"unknown head {self.head!r}; choose one of {HEADS}")
        if self.norm not in NORMS:
            raise ValueError(f"unknown normalisation {self.norm!r}; choose one of {NORMS}")
        if self.head == "softmax" and self.out_channels < 2:
            raise ValueError("the softmax head needs out_channels >= 2")
        for field in ("in_channels", "out_channels", "depth", "base_channels"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be at least 1")

    def to_dict(self) -> dict[str, int | str]:
        """The configuration as a JSON-ready dict."""
        return asdict(self)


class UNet(nn.Module):
    """A U-Net whose hidden activation and output head are configuration.

    `forward` takes (N, C, H, W) floats of any H and W, normalised as the checkpoint's
    `input.normalize` says (`model.data.normalize`: in [0, 1] under `dtype` and `minmax`, not under
    `zscore` or `fixed`; the shipped checkpoints' per-image percentiles map the 1st to 0 and the
    99.8th to 1, unclipped), and returns the head's output of the same H and W; `logits` returns
    the pre-head map, which training and calibration use to avoid the sigmoid's saturation.
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        act, norm = config.activation, config.norm
        widths = [config.base_channels * 2**level for level in range(config.depth + 1)]
        self.stem = ConvBlock(config.in_channels, widths[0], act, norm)
        self.encoder = nn.ModuleList(
            Down(widths[level], widths[level + 1], act, norm) for level in range(config.depth)
        )
        self.decoder = nn.ModuleList(
            Up(widths[level + 1], widths[level], act, norm)
            for level in reversed(range(config.depth))
        )
        self.classifier = nn.Conv2d(widths[0], config.out_channels, kernel_size=1)
        self.head = make_head(config.head, config.out_channels)

    @property
    def multiple(self) -> int:
        """Input sides must be multiples of this; `logits` pads to it and crops back."""
        return 2**self.config.depth

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The pre-head map (N, K, H, W) for input `x` (N, C, H, W) of any H and W."""
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"expected input of shape (N, {self.config.in_channels}, H, W), "
                f"got {tuple(x.shape)}"
            )
        height, width = x.shape[-2:]
        x, (top, left) = self.pad_to_grid(x)
        return self.body(x)[..., top : top + height, left : left + width]

    def body(self, x: torch.Tensor) -> torch.Tensor:
        """The pre-head map for `x` whose sides are already multiples of `multiple` (no padding).

        What `unet export` traces: an exported graph without the shape-dependent padding.
        """
        features = self.stem(x)
        skips = [features]  # one skip connection per encoder level, finest first
        for down in self.encoder:
            features = down(features)
            skips.append(features)
        features = skips.pop()  # the bottleneck is not a skip
        for up in self.decoder:
            features = up(features, skips.pop())
        return self.classifier(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The head's output map (N, K, H, W) for input `x` (N, C, H, W)."""
        return self.head(self.logits(x))

    def pad_to_grid(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """`x` (..., H, W) padded to sides that are multiples of `multiple`, as `logits` pads it.

        Returns the padded tensor and the (top, left) offset of the input inside it, where a
        caller crops the output back. A tiler pads once with this so that every tile sits on the
        whole-image pass's pooling grid.
        """
        return pad_to_multiple(x, self.multiple)

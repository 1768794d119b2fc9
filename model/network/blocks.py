"""Small reusable U-Net blocks, each taking the hidden activation by name."""

from __future__ import annotations

import torch
from torch import nn

from model.network.activations import make_activation

NORMS: tuple[str, ...] = ("batch", "instance", "group", "none")


def make_norm(name: str, channels: int) -> nn.Module:
    """Build normalisation layer `name` for `channels` channels."""
    if name == "batch":
        return nn.BatchNorm2d(channels)
    if name == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if name == "group":
        # Eight groups where possible; fewer for narrow layers so each group keeps channels.
        groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    if name == "none":
        return nn.Identity()
    raise ValueError(f"unknown normalisation {name!r}; choose one of {', '.join(NORMS)}")


class ConvBlock(nn.Sequential):
    """Two 3x3 convolutions, each followed by normalisation and the hidden activation."""

    def __init__(self, in_channels: int, out_channels: int, act: str, norm: str) -> None:
        bias = norm == "none"  # a following norm layer makes the conv bias redundant
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias),
            make_norm(norm, out_channels),
            make_activation(act, out_channels),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=bias),
            make_norm(norm, out_channels),
            make_activation(act, out_channels),
        )


class Down(nn.Sequential):
    """Halve the resolution, then a ConvBlock."""

    def __init__(self, in_channels: int, out_channels: int, act: str, norm: str) -> None:
        super().__init__(nn.MaxPool2d(2), ConvBlock(in_channels, out_channels, act, norm))


class Up(nn.Module):
    """Double the resolution, join the skip connection, then a ConvBlock."""

    def __init__(self, in_channels: int, out_channels: int, act: str, norm: str) -> None:
        super().__init__()
        self.upsample = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        self.block = ConvBlock(2 * out_channels, out_channels, act, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Upsample `x` and fuse it with the encoder feature map `skip`."""
        return self.block(torch.cat([skip, self.upsample(x)], dim=1))

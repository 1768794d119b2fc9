"""Hidden-layer activations: the ReLU family and its answers to dead units and bias shift."""

from __future__ import annotations

from torch import nn

# Each answers ReLU's weaknesses differently: leaky_relu/prelu keep a gradient for negative inputs
# (no dead units), elu/selu push mean activations towards zero, gelu/silu are smooth.
ACTIVATIONS: tuple[str, ...] = ("relu", "leaky_relu", "prelu", "elu", "selu", "gelu", "silu")


def make_activation(name: str, channels: int) -> nn.Module:
    """Build the hidden activation `name` for a layer with `channels` channels."""
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "leaky_relu":
        return nn.LeakyReLU(0.01, inplace=True)
    if name == "prelu":
        return nn.PReLU(num_parameters=channels, init=0.25)
    if name == "elu":
        return nn.ELU(inplace=True)
    if name == "selu":
        return nn.SELU(inplace=True)
    if name == "gelu":
        return nn.GELU()
    if name == "silu":
        return nn.SiLU(inplace=True)
    raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")

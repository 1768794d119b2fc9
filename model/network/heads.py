"""Output heads: what turns the last layer's logits into the model's output map."""

from __future__ import annotations

import math

from torch import nn

HEADS: tuple[str, ...] = ("sigmoid", "relu", "identity", "hard_sigmoid", "softmax")

# The range of each head's output; a threshold outside it can select nothing or everything.
_RANGES: dict[str, tuple[float, float]] = {
    "sigmoid": (0.0, 1.0),
    "hard_sigmoid": (0.0, 1.0),
    "softmax": (0.0, 1.0),
    "relu": (0.0, math.inf),
    "identity": (-math.inf, math.inf),
    # A network that emits its final map itself (a model card's `output.emits`): no head applied.
    "probabilities": (0.0, 1.0),
    "scores": (-math.inf, math.inf),
}


def head_range(name: str) -> tuple[float, float]:
    """The closed interval that head `name`'s output lies in."""
    _check(name)
    return _RANGES[name]


def is_probability(name: str) -> bool:
    """Whether head `name` outputs values in [0, 1] that read as probabilities."""
    return head_range(name) == (0.0, 1.0)


def make_head(name: str, out_channels: int) -> nn.Module:
    """Build the output head `name` for a map with `out_channels` channels."""
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; choose one of {', '.join(HEADS)}")
    if name == "softmax":
        if out_channels < 2:
            raise ValueError(
                "the softmax head needs out_channels >= 2; use sigmoid for one channel"
            )
        return nn.Softmax(dim=1)
    if name == "sigmoid":
        return nn.Sigmoid()
    if name == "hard_sigmoid":
        return nn.Hardsigmoid()
    if name == "relu":
        return nn.ReLU()
    return nn.Identity()


def _check(name: str) -> None:
    if name not in _RANGES:
        raise ValueError(f"unknown head {name!r}; choose one of {', '.join(HEADS)}")


def foreground_channel(name: str) -> int:
    """Which output channel holds the foreground score (softmax keeps background in channel 0)."""
    return 1 if name == "softmax" else 0

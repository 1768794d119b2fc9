"""Activation statistics that make the theory visible: dead hidden units and a saturated head."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

# The module types that model.network.activations.make_activation builds.
_ACTIVATION_TYPES = (nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.GELU, nn.SiLU)
# A sigmoid within 1e-4 of 0 or 1 (|logit| > 9.2) passes back almost no gradient.
SATURATION_MARGIN = 1e-4


class HiddenActivationStats:
    """Per hidden activation layer: units that never fire on a data set, and the sparsity.

    A unit is one channel of a layer; it fires where its output is > 0. A dead unit fires on no
    pixel of any image seen; sparsity is the share of outputs <= 0. Mean and standard deviation
    are over every output of the layer: how far from zero-centred its outputs are.
    """

    def __init__(self) -> None:
        self._max: dict[str, torch.Tensor] = {}
        self._non_positive: dict[str, int] = {}
        self._total: dict[str, int] = {}
        self._sum: dict[str, float] = {}
        self._sum_squares: dict[str, float] = {}

    @contextmanager
    def watch(self, model: nn.Module) -> Iterator[HiddenActivationStats]:
        """Record every hidden activation of `model` while the block runs."""
        hooks = [
            module.register_forward_hook(self._hook(name))
            for name, module in model.named_modules()
            if isinstance(module, _ACTIVATION_TYPES) and not name.startswith("head")
        ]
        try:
            yield self
        finally:
            for hook in hooks:
                hook.remove()

    def _hook(self, name: str) -> Any:
        def record(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            channel_max = output.detach().amax(dim=(0, 2, 3)).float().cpu()
            previous = self._max.get(name)
            self._max[name] = (
                channel_max if previous is None else torch.maximum(previous, channel_max)
            )
            self._non_positive[name] = self._non_positive.get(name, 0) + int((output <= 0).sum())
            self._total[name] = self._total.get(name, 0) + output.numel()
            # float64 sums: a layer's outputs over a data set run to many millions.
            values = output.detach().double()
            self._sum[name] = self._sum.get(name, 0.0) + float(values.sum())
            self._sum_squares[name] = self._sum_squares.get(name, 0.0) + float(
                values.square().sum()
            )

        return record

    def summary(self) -> list[dict[str, Any]]:
        """One row per layer: name, units, dead units and their share, sparsity, mean, std."""
        rows = []
        for name, channel_max in self._max.items():
            dead = int((channel_max <= 0).sum())
            mean = self._sum[name] / self._total[name]
            variance = max(self._sum_squares[name] / self._total[name] - mean**2, 0.0)
            rows.append(
                {
                    "layer": name,
                    "units": channel_max.numel(),
                    "dead_units": dead,
                    "dead_fraction": round(dead / channel_max.numel(), 6),
                    "sparsity": round(self._non_positive[name] / self._total[name], 6),
                    "mean": round(mean, 6),
                    "std": round(variance**0.5, 6),
                }
            )
        return rows


class HeadStats:
    """How much of the head's output sits where its gradient vanishes or its scores tie."""

    def __init__(self, head: str) -> None:
        self.head = head
        self.pixels = 0
        self.saturated = 0  # sigmoid-like heads: within SATURATION_MARGIN of 0 or 1
        self.exact_zero = 0  # ReLU heads: output exactly 0 (no gradient, all tied)
        self.exact_one = 0  # float32 sigmoid rounded to exactly 1.0 (logit above ~16.6)

    def update(self, output: torch.Tensor) -> None:
        """Add one batch of the head's foreground output."""
        self.pixels += output.numel()
        self.exact_zero += int((output == 0).sum())
        self.exact_one += int((output == 1).sum())
        near_edge = (output <= SATURATION_MARGIN) | (output >= 1 - SATURATION_MARGIN)
        self.saturated += int(near_edge.sum())

    def summary(self) -> dict[str, Any]:
        """The head's share of saturated, exactly-zero and exactly-one outputs."""
        total = max(self.pixels, 1)
        result: dict[str, Any] = {"head": self.head, "pixels": self.pixels}
        if self.head in ("sigmoid", "hard_sigmoid", "softmax"):
            result["saturated_fraction"] = round(self.saturated / total, 6)
            result["saturation_margin"] = SATURATION_MARGIN
            result["exactly_one_fraction"] = round(self.exact_one / total, 6)
        result["exactly_zero_fraction"] = round(self.exact_zero / total, 6)
        return result

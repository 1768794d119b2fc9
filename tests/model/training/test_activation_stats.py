"""Hidden-activation statistics on outputs whose answer is known by hand."""

from __future__ import annotations

import math

import torch
from torch import nn

from model.training.activation_stats import HiddenActivationStats


def test_dead_units_sparsity_mean_and_spread_of_a_relu_layer() -> None:
    network = nn.Sequential(nn.ReLU())
    # Channel 0 fires on two of four pixels; channel 1 is negative everywhere, so dead.
    x = torch.tensor([[[[-1.0, 0.0], [1.0, 3.0]], [[-2.0, -1.0], [-1.0, -3.0]]]])
    stats = HiddenActivationStats()
    with stats.watch(network):
        network(x)
    (row,) = stats.summary()
    assert row["units"] == 2 and row["dead_units"] == 1 and row["dead_fraction"] == 0.5
    assert row["sparsity"] == 0.75  # six of the eight outputs are <= 0
    # Outputs 0, 0, 1, 3, 0, 0, 0, 0: mean 0.5, mean square 10 / 8.
    assert row["mean"] == 0.5
    assert math.isclose(row["std"], math.sqrt(10 / 8 - 0.25), abs_tol=1e-6)


def test_a_leaky_relu_layer_is_centred_lower_than_relu_on_the_same_input() -> None:
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    means = []
    for activation in (nn.ReLU(), nn.LeakyReLU(0.2)):
        network, stats = nn.Sequential(activation), HiddenActivationStats()
        with stats.watch(network):
            network(x)
        means.append(stats.summary()[0]["mean"])
    assert means[1] < means[0]

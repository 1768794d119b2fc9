"""Sliding-window inference: tile plans, blending weights, agreement with whole-image inference."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from model import UNet, UNetConfig, load_checkpoint
from model.data.synth import generate_pair
from model.inference.predict import predict
from model.inference.tiling import (
    Blender,
    Tile,
    overlap_pixels,
    plan_tiles,
    predict_tiled,
    ramp,
    tile_side,
    window_starts,
)

SHIPPED = Path(__file__).parents[3] / "model" / "weights" / "unet-sigmoid.safetensors"


@pytest.mark.parametrize("length", [1, 7, 64, 65, 200, 1000, 1024])
def test_windows_cover_the_axis_on_the_grid(length: int) -> None:
    tile, overlap = 64, 16
    starts = window_starts(length, tile, overlap)
    covered = np.zeros(length, dtype=bool)
    for start in starts:
        covered[start : start + tile] = True
    assert covered.all() and starts[0] == 0
    assert starts[-1] + min(tile, length) == length  # the last window ends at the border
    assert all(b - a <= tile - overlap for a, b in itertools.pairwise(starts))


def test_tile_sides_and_overlaps_stay_on_the_pooling_grid() -> None:
    assert tile_side(512, 8) == 512 and tile_side(500, 8) == 496 and tile_side(3, 8) == 8
    assert overlap_pixels(512, 0.25, 8) == 128
    assert overlap_pixels(512, 0.3, 8) % 8 == 0
    assert overlap_pixels(64, 0.99, 8) == 56  # never the whole tile: the stride stays positive
    assert overlap_pixels(64, 0.0, 8) == 0


def test_ramps_are_a_partition_of_unity_and_never_zero() -> None:
    rise = 16
    falling = ramp(64, rise, start=False, end=True)
    rising = ramp(64, rise, start=True, end=False)
    np.testing.assert_allclose(falling[-rise:] + rising[:rise], 1.0, atol=1e-6)
    assert falling.min() > 0 and rising.min() > 0
    np.testing.assert_array_equal(ramp(64, rise, start=False, end=False), 1.0)


def test_blending_a_constant_gives_the_constant() -> None:
    height, width, tile, overlap = 150, 203, 64, 16
    blender = Blender(2, height, width, overlap)
    tiles = plan_tiles(height, width, tile, overlap)
    for t in tiles:
        blender.add(t, np.full((2, t.height, t.width), 3.5, dtype=np.float32))
    np.testing.assert_allclose(blender.logits(), 3.5, rtol=1e-6)
    assert Tile(0, 0, 5, 5).rows == slice(0, 5)


def structured_model(base_channels: int = 4, seed: int = 0) -> UNet:
    """A random U-Net whose BatchNorm statistics are estimated on a synthetic image.

    With the default statistics (mean 0, variance 1) a random network's output is nearly
    constant; estimated ones give every layer unit-scale activations, so the output has structure
    at every scale the receptive field spans, which is what tiling could get wrong.
    """
    torch.manual_seed(seed)
    network = UNet(UNetConfig(depth=3, base_channels=base_channels))
    for module in network.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # a plain average over the passes
    image, _ = generate_pair(np.random.default_rng(seed), 256)
    network.train()
    with torch.no_grad():
        network(torch.from_numpy(image.astype(np.float32) / 255)[None, None])
    return network.eval()


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean masks."""
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


@pytest.mark.slow
def test_tiled_agrees_with_whole_image_on_1024_pixels() -> None:
    """Dice >= 0.98 between tiled and whole-image masks on a 1024 x 1024 image.

    With the shipped sigmoid checkpoint the masks are cut at its threshold; without it, a
    structured random network is used and both outputs are cut at the whole output's median,
    where the most pixels sit near the cut and disagreement would show most.
    """
    raw, _ = generate_pair(np.random.default_rng(1), 1024)
    x = raw[None].astype(np.float32) / 255
    cut: float | None = None
    if SHIPPED.is_file():
        network, meta = load_checkpoint(SHIPPED)
        cut = float(meta.default_threshold["value"]) if meta.default_threshold else 0.5
    else:
        network = structured_model()
    whole = predict(network, x)
    tiled = predict_tiled(network, x, tile=512, overlap=0.25)
    if cut is None:
        cut = float(np.median(whole.output))
    assert tiled.output.shape == (1024, 1024)
    assert dice(whole.output >= cut, tiled.output >= cut) >= 0.98
    spread = float(whole.logits.std())
    assert np.abs(whole.logits - tiled.logits).mean() < 0.05 * spread


def test_a_single_tile_is_exactly_the_whole_image() -> None:
    network = structured_model()
    x = np.random.default_rng(0).random((1, 45, 61), dtype=np.float32)
    whole, tiled = predict(network, x), predict_tiled(network, x, tile=64)
    np.testing.assert_allclose(tiled.logits, whole.logits, atol=1e-5)
    np.testing.assert_allclose(tiled.output, whole.output, atol=1e-6)


@pytest.mark.parametrize("head", ["relu", "identity", "softmax"])
def test_tiled_output_is_the_head_of_the_blended_logits(head: str) -> None:
    torch.manual_seed(0)
    channels = 2 if head == "softmax" else 1
    network = UNet(UNetConfig(depth=2, base_channels=4, head=head, out_channels=channels)).eval()
    x = np.random.default_rng(0).random((1, 70, 90), dtype=np.float32)
    tiled = predict_tiled(network, x, tile=32, overlap=0.25, batch_size=4)
    logits = torch.from_numpy(tiled.logits)
    expected = {"relu": logits.relu(), "identity": logits, "softmax": logits.sigmoid()}[head]
    np.testing.assert_allclose(tiled.output, expected.numpy(), atol=1e-6)
    assert tiled.output.shape == (70, 90)

"""Sliding-window inference: overlapping tiles blended smoothly into one full-size map.

Memory stays bounded by the tile, not the image: a tile's activations are all the network holds,
and the full-size maps are a few float32 planes. The logits (before the head) are blended and the
head is applied once to the blend, so `output == head(logits)` holds for tiled results exactly as
for whole images, and a threshold on the output means the same thing on either path.

Each tile is weighted by a cosine ramp across the part it shares with a neighbour and 1 elsewhere
(no ramp on the image's own border, where no neighbour exists). Two overlapping ramps sum to one,
so the blend is a partition of unity, and a tile's edge, where its network saw the least context,
counts least. Weights never reach zero (ramps are sampled at pixel centres), and the blend is
normalised by the accumulated weight, so irregular overlaps (the last tile of a row, which is
shifted to end at the border) are handled too.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from model.cards.sources.base import Predictor
from model.cards.sources.native import as_predictor
from model.inference.predict import (
    ClassPrediction,
    Prediction,
    check_finite,
    to_class_predictions,
    to_predictions,
)
from model.network.unet import UNet


@dataclass(frozen=True)
class Tile:
    """A window of the image: rows `top:top+height`, columns `left:left+width`."""

    top: int
    left: int
    height: int
    width: int

    @property
    def rows(self) -> slice:
        """The tile's rows in the full image."""
        return slice(self.top, self.top + self.height)

    @property
    def cols(self) -> slice:
        """The tile's columns in the full image."""
        return slice(self.left, self.left + self.width)


def tile_side(requested: int, multiple: int) -> int:
    """The tile side to use: `requested` rounded down to a multiple the network needs no pad for."""
    return max(multiple, requested - requested % multiple)


def window_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of windows of side `tile` covering `length` with at least `overlap` shared."""
    if length <= tile:
        return [0]
    stride = max(1, tile - overlap)
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)  # the last window ends exactly at the border
    return starts


def plan_tiles(height: int, width: int, tile: int, overlap: int) -> list[Tile]:
    """Row-major tiles of side `tile` (clipped to the image) covering a `height` x `width` image."""
    rows = window_starts(height, tile, overlap)
    cols = window_starts(width, tile, overlap)
    return [Tile(top, left, min(tile, height), min(tile, width)) for top in rows for left in cols]


def overlap_pixels(tile: int, fraction: float, multiple: int = 1) -> int:
    """The overlap in pixels for a fraction of the tile side, a multiple of `multiple`."""
    pixels = multiple * round(tile * fraction / multiple)
    return max(0, min(tile - multiple, pixels))


def ramp(length: int, rise: int, start: bool, end: bool) -> np.ndarray:
    """1-D weights: 1, with a cosine rise over `rise` pixels at each end that has a neighbour."""
    weights = np.ones(length, dtype=np.float32)
    rise = min(rise, length // 2)
    if rise <= 0:
        return weights
    # sin^2 at pixel centres: never 0, and a rising and a falling ramp sum to exactly 1.
    edge = np.sin(0.5 * math.pi * (np.arange(rise, dtype=np.float64) + 0.5) / rise) ** 2
    if start:
        weights[:rise] = edge
    if end:
        weights[-rise:] = edge[::-1]
    return weights


def tile_weights(tile: Tile, height: int, width: int, overlap: int) -> np.ndarray:
    """The (height, width) blending weights of `tile` within a `height` x `width` image."""
    along_rows = ramp(tile.height, overlap, tile.top > 0, tile.top + tile.height < height)
    along_cols = ramp(tile.width, overlap, tile.left > 0, tile.left + tile.width < width)
    return np.outer(along_rows, along_cols)


class Blender:
    """Accumulates weighted tile logits into a full-size map; safe to feed from several threads."""

    def __init__(self, channels: int, height: int, width: int, overlap: int) -> None:
        self.height, self.width, self.overlap = height, width, overlap
        self._sum = np.zeros((channels, height, width), dtype=np.float32)
        self._weight = np.zeros((height, width), dtype=np.float32)
        self._lock = threading.Lock()

    def add(self, tile: Tile, logits: np.ndarray) -> None:
        """Add one tile's logits (K, tile.height, tile.width)."""
        weights = tile_weights(tile, self.height, self.width, self.overlap)
        weighted = logits * weights  # computed outside the lock: only the sums are shared
        with self._lock:
            self._sum[:, tile.rows, tile.cols] += weighted
            self._weight[tile.rows, tile.cols] += weights

    def logits(self) -> np.ndarray:
        """The blended logits (K, H, W); call once, after every tile was added."""
        with self._lock:
            np.divide(self._sum, self._weight, out=self._sum)
            # A full-size plane nobody reads again: freed before the answer's planes are made.
            self._weight = np.empty((0, 0), dtype=np.float32)
            return self._sum


class TiledImage:
    """One image cut into tiles for `model`: crops out, tile logits in, a Prediction at the end.

    The image is first padded exactly as `UNet.logits` pads a whole image, so every tile starts
    on the network's pooling grid (a multiple of 2**depth) and needs no padding of its own: a
    tile's interior then sees what the whole-image pass sees there.
    """

    def __init__(
        self, model: UNet | Predictor, image: np.ndarray, tile: int, overlap: float
    ) -> None:
        model = as_predictor(model)
        _, self.height, self.width = image.shape
        multiple = model.multiple
        # The model's own padding rule, so the tiles share the whole-image pass's grid.
        tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
        padded, (self.top, self.left) = model.pad_to_grid(tensor)
        self.image = padded[0].numpy()
        side = tile_side(tile, multiple)
        shared = overlap_pixels(side, overlap, multiple)
        _, padded_height, padded_width = self.image.shape
        self.tiles = plan_tiles(padded_height, padded_width, side, shared)
        self._model = model
        self._blender = Blender(model.out_channels, padded_height, padded_width, shared)

    def crop(self, index: int) -> np.ndarray:
        """The input (C, h, w) of tile `index`."""
        tile = self.tiles[index]
        return self.image[:, tile.rows, tile.cols]

    def add(self, index: int, logits: np.ndarray) -> None:
        """Blend in the logits (K, h, w) of tile `index`."""
        self._blender.add(self.tiles[index], logits)

    def finish(self) -> Prediction:
        """The Prediction for the whole image; call once, after every tile was added."""
        with torch.inference_mode():
            return to_predictions(self._model, self._blended())[0]

    def finish_classes(self) -> ClassPrediction:
        """Every class's map for the whole image (multi-class models); call once, instead."""
        with torch.inference_mode():
            return to_class_predictions(self._model, self._blended())[0]

    def _blended(self) -> torch.Tensor:
        """The blended network output (1, K, H, W), cropped back to the image."""
        blended = self._blender.logits()[:, self.top : self.top + self.height]
        return torch.from_numpy(blended[:, :, self.left : self.left + self.width])[None]


def tile_batches(count: int, size: int) -> Iterator[range]:
    """Tile indices `0..count-1` in consecutive groups of at most `size`."""
    for start in range(0, count, size):
        yield range(start, min(count, start + size))


@torch.inference_mode()
def predict_tiled(
    model: UNet | Predictor,
    image: np.ndarray,
    tile: int = 512,
    overlap: float = 0.25,
    batch_size: int = 1,
    logits_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Prediction:
    """Like `model.inference.predict.predict`, in overlapping tiles: memory bounded by the tile."""
    predictor = as_predictor(model)
    device = predictor.device
    forward = logits_fn or predictor.logits
    tiled = TiledImage(predictor, image, tile, overlap)
    for group in tile_batches(len(tiled.tiles), batch_size):
        crops = torch.from_numpy(np.stack([tiled.crop(i) for i in group])).to(device)
        logits = forward(crops).float().cpu().numpy()
        for index, tile_logits in zip(group, logits, strict=True):
            tiled.add(index, tile_logits)
    return check_finite(tiled.finish())

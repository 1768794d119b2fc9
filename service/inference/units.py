"""How a request becomes batchable work: a whole image, or the tiles of a large one.

An image whose padded area passes `UNET_TILE_THRESHOLD_PIXELS` is cut into overlapping tiles
(`model.inference.tiling`); each tile is a unit of its job, so tiles spread over every worker
and join batches like ordinary images, and memory stays bounded by the tile whatever the image.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from anyio import to_thread

from model.inference.predict import (
    ClassPrediction,
    Prediction,
    check_finite,
    to_class_predictions,
    to_predictions,
)
from model.inference.tiling import TiledImage
from service.inference.batching import Job
from service.inference.registry import ServedModel
from service.ops import tracing
from service.settings import Settings

# A request's own post-processing of its prediction (thresholding, encoding), run in the worker
# thread that finished the job: one hand-off per request fewer than a trip back to the loop.
# A binary model's jobs finish with a Prediction (H, W), a multi-class model's with a
# ClassPrediction (K, H, W).
Finish = Callable[[Any], Any]


class ImageJob(Job):
    """A whole image: one unit, batched with images of the same shape."""

    def __init__(self, image: np.ndarray, finish: Finish) -> None:
        super().__init__(key=image.shape)
        self.image = image
        self.finish = finish

    def crop(self, index: int) -> np.ndarray:
        """The network input of unit `index` (the whole image)."""
        return self.image


class TiledJob(Job):
    """A large image: one unit per tile, blended into the full map when the last one is in."""

    def __init__(self, tiled: TiledImage, finish: Finish, classes: bool = False) -> None:
        first = tiled.tiles[0]
        key = (tiled.image.shape[0], first.height, first.width)
        super().__init__(key=key, units=len(tiled.tiles))
        self.tiled = tiled
        self.finish = finish
        self.classes = classes  # every class's map (multi-class models), not one foreground
        self._added = 0
        self._lock = threading.Lock()  # tiles of one job finish in several worker threads

    def crop(self, index: int) -> np.ndarray:
        """The network input of tile `index`."""
        return self.tiled.crop(index)

    def add(self, index: int, logits: np.ndarray) -> Prediction | ClassPrediction | None:
        """Blend in tile `index`; the whole image's prediction once every tile is in, else None."""
        self.tiled.add(index, logits)
        with self._lock:
            self._added += 1
            last = self._added == self.units
        if not last:
            return None
        return self.tiled.finish_classes() if self.classes else self.tiled.finish()


def needs_tiles(served: ServedModel, height: int, width: int, settings: Settings) -> bool:
    """Whether the network's padded input for an image of this size passes the threshold."""
    multiple = served.network.multiple
    padded = (-(-height // multiple) * multiple) * (-(-width // multiple) * multiple)
    return padded > settings.tile_threshold_pixels


async def make_job(
    served: ServedModel, image: np.ndarray, settings: Settings, finish: Finish
) -> Job:
    """The job for one (C, H, W) float image: whole, or tiled when it is large."""
    _, height, width = image.shape
    if not needs_tiles(served, height, width, settings):
        return ImageJob(np.ascontiguousarray(image, dtype=np.float32), finish)
    # Padding a large image copies it: off the event loop.
    tiling = served.card.tiling  # a card may override the tile size and overlap
    size = tiling.size or settings.tile_size
    overlap = settings.tile_overlap if tiling.overlap is None else tiling.overlap
    tiled = await to_thread.run_sync(TiledImage, served.network, image, size, overlap)
    return TiledJob(tiled, finish, classes=served.multi_class)


def crop(job: Job, index: int) -> np.ndarray:
    """The network input of unit `index` of `job`."""
    assert isinstance(job, ImageJob | TiledJob), f"not a job of this engine: {job!r}"
    return job.crop(index)


def finish(job: Job, prediction: Prediction | ClassPrediction) -> Any:
    """The job's post-processing of its finished prediction; an error becomes its result.

    Traced as the request's `encode` span: the drift watch and the caller's encoding.
    """
    assert isinstance(job, ImageJob | TiledJob), f"not a job of this engine: {job!r}"
    try:
        with tracing.child_span(job.origin.span, "encode"):
            check_finite(Prediction(prediction.output, prediction.logits))
            return job.finish(prediction)
    except Exception as error:  # fails this request only, not the others of its batch
        return error


def whole_predictions(
    served: ServedModel, logits: torch.Tensor
) -> list[Prediction] | list[ClassPrediction]:
    """One prediction per whole image of a batch's logits: a multi-class model's jobs get every
    class's map (K, H, W) in class order, a binary model's its foreground (H, W)."""
    if served.multi_class:
        return to_class_predictions(served.network, logits)
    return to_predictions(served.network, logits)

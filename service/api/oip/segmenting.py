"""The one place `/v2` reaches the model: a batch of decoded images in, masks and provenance out.

`segment_batch` runs each of N images through the same segment use case as v1's routes
(`service.usecases.segment`: the threshold in force for the checkpoint or the request's, drift
watched against the active calibration, one engine job per image, so a batch of N is N jobs for
the batcher) and adds the protocol's provenance.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from service.container import Services
from service.inference.registry import ServedModel
from service.state.errors import StoreUnavailable
from service.usecases.segment import Segmentation, segment_pixels


class Provenance(NamedTuple):
    """Where an answer's threshold came from, as v1's X-Threshold-* headers say."""

    source: str  # default, calibration, manual or request
    calibration_id: str | None  # the active calibration, which drift is watched against
    stale: bool  # the store is failing: the active threshold is the last one known
    drift: str  # ok, warn, alert or no_reference; unknown while the store cannot say


class Segmented(NamedTuple):
    """One image's answer."""

    probabilities: np.ndarray  # float32 (H, W): the head's output
    mask: np.ndarray  # uint8 (H, W): 1 where the output >= threshold
    threshold: float
    provenance: Provenance


async def segment_batch(
    services: Services, served: ServedModel, images: Sequence[np.ndarray], threshold: float | None
) -> list[Segmented]:
    """Each (C, H, W) image's output, mask and threshold; `threshold` None: the one in force.

    Each image goes through the segment use case as its own job; raises what it raises
    (overload, timeout, a threshold out of range); the first failure cancels the other images.
    """
    tasks = [
        asyncio.ensure_future(segment_pixels(services, served, image, _tensors, threshold))
        for image in images
    ]
    try:
        results = await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()  # the answer fails as a whole: the others are not worth running
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    first = results[0].segmentation
    drift: str
    try:
        drift = services.drift.status(served.name, first.calibration_id)
    except StoreUnavailable:
        drift = "unknown"
    provenance = Provenance(first.cut.source, first.calibration_id, first.cut.stale, drift)
    return [
        Segmented(result.body[0], result.body[1], result.segmentation.cut.value, provenance)
        for result in results
    ]


def _tensors(result: Segmentation) -> tuple[np.ndarray, np.ndarray]:
    """The encode stage: float32 scores and the 0/1 mask, as the protocol's tensors hold them."""
    return np.asarray(result.scores, dtype=np.float32), result.mask.astype(np.uint8)

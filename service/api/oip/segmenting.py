"""The one place `/v2` reaches the model: a batch of decoded images in, masks and provenance out.

`segment_batch` does for N images what v1's inference routes do for one: it settles the
threshold (the request's, else the one active for the model's checkpoint), watches drift against
the active calibration, and runs each image through the engine as its own job, so a batch of N
is N jobs for the batcher.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from model.inference.predict import Prediction
from service.container import Services
from service.inference.registry import ServedModel
from service.state.errors import StoreUnavailable


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
    """Each (C, H, W) image's output, mask and threshold; `threshold` None: the active one.

    Raises the engine's errors (overload, timeout); the first failure cancels the other images.
    """
    active = await services.active_threshold_async(served)
    value = active.value if threshold is None else threshold
    try:
        observe = services.drift.watch(served.name, active.calibration_id)
    except StoreUnavailable:  # a new calibration's profile is unreadable now: serve unwatched
        observe = _unwatched

    def cut(prediction: Prediction) -> tuple[np.ndarray, np.ndarray]:
        output = observe(prediction).output
        return np.asarray(output, dtype=np.float32), (output >= value).astype(np.uint8)

    tasks = [asyncio.ensure_future(services.engine.run(served, image, cut)) for image in images]
    try:
        results = await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()  # the answer fails as a whole: the others are not worth running
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    drift: str
    try:
        drift = services.drift.status(served.name, active.calibration_id)
    except StoreUnavailable:
        drift = "unknown"
    provenance = Provenance(
        "request" if threshold is not None else active.source,
        active.calibration_id,
        active.stale and threshold is None,
        drift,
    )
    return [Segmented(scores, mask, value, provenance) for scores, mask in results]


def _unwatched(prediction: Prediction) -> Prediction:
    return prediction

"""The one place `/v2` reaches the model: a batch of decoded images in, masks and provenance out.

`segment_batch` runs each of N images through the same segment use case as v1's routes
(`service.usecases.segment`: the threshold in force for the checkpoint or the request's, drift
watched against the active calibration, one engine job per image, so a batch of N is N jobs for
the batcher) and adds the protocol's provenance. Every answer has K planes: 1 for a binary model,
one per class for a multi-class one (in `classes` order), or the one class a request names.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from service.api.routes.class_answers import per_class_text
from service.container import Services
from service.inference.registry import ServedModel
from service.state.errors import StoreUnavailable
from service.usecases.segment import Segmentation, segment_pixels


class Provenance(NamedTuple):
    """Where an answer's thresholds came from, as v1's X-Threshold-* headers say."""

    source: str  # default, calibration, manual or request; per class `nucleus=default;...`
    calibration_id: str | None  # the active calibration, which drift is watched against
    stale: bool  # the store is failing: the active threshold is the last one known
    drift: str  # ok, warn, alert or no_reference; unknown while the store cannot say


class Planes(NamedTuple):
    """One image's tensors: K planes each, with the K classes' names and thresholds."""

    probabilities: np.ndarray  # float32 (K, H, W): the head's output
    mask: np.ndarray  # uint8 (K, H, W): 1 where the class is taken
    thresholds: tuple[float, ...]  # K
    classes: tuple[str, ...]  # K names; () for a binary model
    sources: tuple[str, ...]  # K threshold sources


class Segmented(NamedTuple):
    """One image's answer."""

    planes: Planes
    provenance: Provenance

    @property
    def threshold_text(self) -> str:
        """The thresholds as v1's X-Threshold says them: `0.5`, or `nucleus=0.41;debris=0.63`."""
        planes = self.planes
        if not planes.classes:
            return repr(planes.thresholds[0])
        return per_class_text(planes.classes, planes.thresholds)


async def segment_batch(
    services: Services,
    served: ServedModel,
    images: Sequence[np.ndarray],
    threshold: float | None,
    cls: str | None = None,
) -> list[Segmented]:
    """Each (C, H, W) image's planes; `threshold` None: the ones in force; `cls`: one class only.

    Each image goes through the segment use case as its own job; raises what it raises
    (overload, timeout, a threshold out of range); the first failure cancels the other images.
    A request's threshold applies to every class, as on v1.
    """
    encode = functools.partial(_tensors, cls)
    tasks = [
        asyncio.ensure_future(segment_pixels(services, served, image, encode, threshold))
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
    planes = results[0].body
    source = per_class_text(planes.classes, planes.sources) if planes.classes else planes.sources[0]
    provenance = Provenance(source, first.calibration_id, first.cut.stale, drift)
    return [Segmented(result.body, provenance) for result in results]


def _tensors(cls: str | None, result: Segmentation) -> Planes:
    """The encode stage: float32 scores and the 0/1 masks, K planes each."""
    scores = np.asarray(result.scores, dtype=np.float32)
    if not result.multi_class:
        mask = result.mask.astype(np.uint8)[None]
        return Planes(scores[None], mask, (result.cut.value,), (), (result.cut.source,))
    cuts = result.cuts
    if cls is None:
        names, rows = result.classes, slice(None)
    else:
        index = result.class_index(cls)
        names, rows, cuts = (cls,), slice(index, index + 1), cuts[index : index + 1]
    return Planes(
        scores[rows],
        result.mask[rows].astype(np.uint8),
        tuple(cut.value for cut in cuts),
        names,
        tuple(cut.source for cut in cuts),
    )

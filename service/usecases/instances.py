"""Objects in one image: the segment use case, then the mask's objects, labelled and measured.

The image goes through `segment_encoded` unchanged (same decoding, threshold, engine, drift
watch), so its threshold rules and headers are `/mask`'s. The labelling runs as the encode
stage, in the inference worker, on the stitched score map: a tiled image's objects are labelled
whole, never per tile.

Multi-class models: each class's objects come from that class's `/mask?class=` mask (the decision
rule, or its own cut when multilabel) and are measured on that class's map; one class when the
request names it, every class otherwise (ids run 1..N within each class).

A count with its uncertainty: when the threshold in force comes from a calibration whose report
has a bootstrap interval (`threshold_ci`), the objects are also counted at the interval's two
ends, which says how much the count owes to the threshold's own uncertainty.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
from anyio import to_thread

from model.calibration import CalibrationReport
from model.inference.instances import (
    InstanceOptions,
    ObjectRow,
    count_objects,
    label_mask,
    label_scores,
    object_table,
)
from service.container import Services
from service.inference.registry import ServedModel
from service.state.errors import StoreUnavailable
from service.usecases.segment import Encoded, ImageSource, Segmentation, segment_encoded

T = TypeVar("T")


@dataclass(frozen=True)
class CountRange:
    """The object count at the two ends of the active calibration's threshold interval."""

    calibration_id: str
    thresholds: tuple[float, float]  # the bootstrap interval's low and high threshold
    counts: tuple[int, int]  # the count at each


@dataclass(frozen=True)
class Objects:
    """One class's objects in one image: the label image (0 background, 1..N), table, count."""

    segmentation: Segmentation
    labels: np.ndarray  # int32 (H, W)
    options: InstanceOptions
    count_range: CountRange | None = None
    class_name: str | None = None  # a multi-class model's class; None for a binary model
    threads: int = 1  # the cores measuring may spread over

    @property
    def scores(self) -> np.ndarray:
        """The map the objects are measured on: the class's own for a multi-class model."""
        segmentation = self.segmentation
        if self.class_name is None:
            return segmentation.scores
        return segmentation.scores[segmentation.class_index(self.class_name)]

    @property
    def count(self) -> int:
        """How many objects there are."""
        return int(self.labels.max(initial=0))

    @functools.cached_property
    def rows(self) -> list[ObjectRow]:
        """Each object's measurements, in id order; measured when first asked for (a label
        image answer never needs them)."""
        return object_table(self.labels, self.scores, self.threads)


# One Objects for a binary model or a named class; one per class, in class order, otherwise.
EncodeObjects = Callable[[Sequence[Objects]], T]


@dataclass(frozen=True)
class _Interval:
    calibration_id: str
    low: float
    high: float


async def find_objects(
    services: Services,
    served: ServedModel,
    image: ImageSource,
    options: InstanceOptions,
    encode: EncodeObjects[T],
    threshold: float | None = None,
    with_count_range: bool = False,
    class_name: str | None = None,
) -> Encoded[T]:
    """Segment `image`, label its objects and run `encode` on them in the inference worker.

    Multi-class models: class `class_name`'s objects, or every class's when None (the route
    checked the name). With `with_count_range` and no request threshold, a binary model's count
    is also taken at the ends of the active calibration's bootstrap interval, when it has one.
    Raises what `segment_encoded` does.
    """
    interval = None
    if with_count_range and threshold is None and not served.multi_class:
        interval = await _active_interval(services, served)
    threads = services.engine.plan.host_cores
    stage = _Label(options, encode, interval, class_name, threads)
    return await segment_encoded(services, served, image, stage, threshold)


async def _active_interval(services: Services, served: ServedModel) -> _Interval | None:
    """The bootstrap interval of the calibration in force, if there is one and it can be read."""
    active = await services.active_threshold_async(served)
    if active.source != "calibration" or active.calibration_id is None:
        return None
    calibration_id = active.calibration_id
    try:
        record = await to_thread.run_sync(
            services.store.get_calibration, served.name, calibration_id
        )
    except StoreUnavailable:  # the database fails: answer without the range rather than not
        return None
    report = None if record is None else record.report
    # A multi-class report has no single interval (nor do binary models read one).
    if not isinstance(report, CalibrationReport) or report.threshold_ci is None:
        return None
    low, high = report.threshold_ci
    return _Interval(calibration_id, float(low), float(high))


@dataclass(frozen=True)
class _Label(Generic[T]):
    """The encode stage: label the cut map, measure, count at the interval's ends, encode."""

    options: InstanceOptions
    encode: EncodeObjects[T]
    interval: _Interval | None
    class_name: str | None = None
    threads: int = 1  # the cores the split's bands may spread over

    def __call__(self, segmentation: Segmentation) -> T:
        """`encode` of the segmentation's objects."""
        if segmentation.multi_class:
            names = (self.class_name,) if self.class_name else segmentation.classes
            return self.encode([self._class_objects(segmentation, name) for name in names])
        scores = segmentation.scores
        labels = label_scores(scores, segmentation.cut.value, self.options, self.threads)
        count_range = None
        interval = self.interval
        # Only when the cut is the calibration the interval belongs to (not one changed since).
        if (
            interval is not None
            and segmentation.cut.source == "calibration"
            and segmentation.calibration_id == interval.calibration_id
        ):
            counts = (
                count_objects(scores, interval.low, self.options, self.threads),
                count_objects(scores, interval.high, self.options, self.threads),
            )
            count_range = CountRange(interval.calibration_id, (interval.low, interval.high), counts)
        objects = Objects(segmentation, labels, self.options, count_range, threads=self.threads)
        return self.encode([objects])

    def _class_objects(self, segmentation: Segmentation, name: str) -> Objects:
        """Class `name`'s objects: its `/mask?class=` mask, labelled."""
        mask = segmentation.mask[segmentation.class_index(name)]
        labels = label_mask(mask, self.options, self.threads)
        return Objects(segmentation, labels, self.options, class_name=name, threads=self.threads)

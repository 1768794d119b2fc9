"""A multi-class model's calibration job: one pass over the set, one histogram per class.

The images go through the inference engine as a client's do (same device, precision, tiling and
queue); each image's K class maps are counted one-vs-rest against its label image (multiclass) or
its class masks (multilabel) in `model.calibration.ClassHistograms`, whose memory depends on the
number of bins and classes, never on the number of images. The report holds the full binary report
of each class (`report.classes[name]`) and the per-class and macro Dice against argmax and 0.5.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

import numpy as np

from model.calibration import Criterion, MultiClassReport, build_class_report
from model.data.classes import iter_class_pairs
from model.inference.classes import new_class_histograms
from model.inference.predict import ClassPrediction
from service.inference.engine import InferenceEngine
from service.inference.registry import ServedModel

# Heads whose class maps are exactly a sigmoid or softmax share of an order-keeping logit.
_LOGIT_HEADS = ("sigmoid", "softmax")


async def calibrate_classes(
    engine: InferenceEngine,
    served: ServedModel,
    root: Any,
    criterion: Criterion | Mapping[str, Criterion],
    progress: Callable[[int], Awaitable[None]],
) -> MultiClassReport:
    """The per-class report of `served` on the extracted set at `root`, in one pass."""
    counts = new_class_histograms(served.network)
    items: Iterator[tuple[str, np.ndarray, np.ndarray]] = iter_class_pairs(
        root, served.classes, served.mode, served.input
    )
    done = 0
    while True:
        item = await asyncio.to_thread(next, items, None)
        if item is None:
            break
        _, image, target = item
        prediction = await engine.predict(served, image, wait=True)
        assert isinstance(prediction, ClassPrediction)
        logits = prediction.logits if served.head in _LOGIT_HEADS else None
        await asyncio.to_thread(counts.update, prediction.output, target, logits=logits)
        done += 1
        await progress(done)
    return await asyncio.to_thread(build_class_report, counts, criterion)

"""Pure calibration maths: (score map, mask) pairs in, a threshold and its evidence out.

Typical use, one image at a time so that memory stays flat::

    hist = ScoreHistogram("probability")        # "unbounded" for relu / identity heads
    for scores, mask in pairs:
        hist.update(scores, mask)               # or update(logits, mask, logits=True)
    report = build_report(hist, Criterion("target_tpr", target=0.95))
    report.threshold, report.to_dict()         # typed values; the README's report JSON

or `calibrate_arrays(pairs, scale, criterion)` for the same in one call. A multi-class model's
classes: `ClassHistograms` (one histogram per class, one pass), `build_class_report` (a
`MultiClassReport`: `classes[name]` is each class's `CalibrationReport`) and `decide`, the
multiclass decision rule. No I/O, no torch.
"""

from model.calibration.binning import SCALES, BinLayout
from model.calibration.classes import ClassHistograms, build_class_report, calibrate_class_arrays
from model.calibration.decision import argmax_labels, decide
from model.calibration.histogram import ScoreHistogram
from model.calibration.report import build_report, calibrate_arrays
from model.calibration.schema import (
    CalibrationReport,
    ClassDice,
    ClassSummary,
    MultiClassReport,
    OperatingPoint,
)
from model.calibration.strategies import (
    ALL_STRATEGIES,
    GUARANTEE_STRATEGIES,
    STRATEGIES,
    TARGET_STRATEGIES,
    Criterion,
)
from model.errors import CalibrationError

__all__ = [
    "ALL_STRATEGIES",
    "GUARANTEE_STRATEGIES",
    "SCALES",
    "STRATEGIES",
    "TARGET_STRATEGIES",
    "BinLayout",
    "CalibrationError",
    "CalibrationReport",
    "ClassDice",
    "ClassHistograms",
    "ClassSummary",
    "Criterion",
    "MultiClassReport",
    "OperatingPoint",
    "ScoreHistogram",
    "argmax_labels",
    "build_class_report",
    "build_report",
    "calibrate_arrays",
    "calibrate_class_arrays",
    "decide",
]

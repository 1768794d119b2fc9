"""What an active calibration adds to served answers: a recalibration map and a guarantee.

A calibration fitted with `recalibrate=` carries a strictly increasing map from the head's scores
to calibrated probabilities (`model.calibration.recalibration.MonotoneMap`). While its threshold
is the one in force, served probability maps and thresholds are on the calibrated scale: the map
is applied to the engine's output and to the threshold, and a threshold a client gives is brought
back through its inverse. Masks are cut on the head's own scores, so they stay identical.

A calibration by `fnr_control` or `fdr_control` carries a guarantee; it holds for images like the
calibration set, so while the model's drift status is `alert` the service withdraws the claim:
`X-Threshold-Guarantee: withdrawn (drift alert)` on inference answers and a `guarantee_withdrawn`
warning in ModelInfo, instead of `present`.

A succeeded calibration never changes, so what it adds is read from the store once per process.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Literal

from model.calibration import CalibrationReport
from model.calibration.recalibration import MonotoneMap
from service.state.store import ThresholdStore

GuaranteeState = Literal["present", "withdrawn (drift alert)"]
GUARANTEE_PRESENT: GuaranteeState = "present"
GUARANTEE_WITHDRAWN: GuaranteeState = "withdrawn (drift alert)"
WITHDRAWN_WARNING = (
    "the served images drifted from the calibration set (drift status alert), so the "
    "calibration's guarantee no longer applies to them; recalibrate on recent images"
)


@dataclass(frozen=True)
class CalibrationExtras:
    """The recalibration map and whether a guarantee comes with one calibration."""

    rescale: MonotoneMap | None = None
    guaranteed: bool = False


NONE = CalibrationExtras()


class ExtrasCache:
    """Each calibration's extras, read from the store on first use and kept."""

    def __init__(self, store: ThresholdStore) -> None:
        """Empty; reads go to `store`."""
        self._store = store
        self._known: dict[tuple[str, str], CalibrationExtras] = {}
        self._lock = threading.Lock()

    def of(self, model: str, calibration_id: str | None) -> CalibrationExtras:
        """What the calibration adds (nothing for none); may read the store (call off the loop)."""
        if calibration_id is None:
            return NONE
        key = (model, calibration_id)
        with self._lock:
            known = self._known.get(key)
        if known is not None:
            return known
        record = self._store.get_calibration(model, calibration_id)
        report = None if record is None else record.report
        if report is None:
            return NONE  # not kept: a record read mid-write may have its report later
        extras = (
            CalibrationExtras(
                None if report.recalibration is None else MonotoneMap.of(report.recalibration),
                report.guarantee is not None,
            )
            if isinstance(report, CalibrationReport)
            else NONE  # a multi-class report: neither guarantees nor recalibrates (README)
        )
        with self._lock:
            self._known[key] = extras
        return extras

    def cached(self, model: str, calibration_id: str | None) -> CalibrationExtras | None:
        """The extras if already read (None: not yet), never touching the store."""
        if calibration_id is None:
            return NONE
        with self._lock:
            return self._known.get((model, calibration_id))


def guarantee_state(extras: CalibrationExtras, drift_status: str | None) -> GuaranteeState | None:
    """`present`, `withdrawn (drift alert)`, or None when the calibration guarantees nothing."""
    if not extras.guaranteed:
        return None
    return GUARANTEE_WITHDRAWN if drift_status == "alert" else GUARANTEE_PRESENT

"""Whether a calibration may become the active threshold, and the evidence its warnings weigh.

A calibration whose report carries a `block` warning (`model.calibration.health`) succeeds and is
stored, but becomes active only when the request says `force=true`.
"""

from __future__ import annotations

from model.calibration import CalibrationReport, MultiClassReport
from service.inference.registry import ServedModel
from service.state.store import ThresholdStore


def reference_auc(served: ServedModel, store: ThresholdStore) -> float | None:
    """The model's known pixel AUC: its card's recorded one, else its first calibration's."""
    if served.meta is not None and served.meta.reference_auc is not None:
        return served.meta.reference_auc
    first = [
        record.auc
        for record in store.list_calibrations(served.name)  # newest first
        if record.status == "succeeded" and record.digest == served.digest
    ]
    return first[-1] if first else None


def blocking_codes(report: CalibrationReport | MultiClassReport | None) -> list[str]:
    """The codes of a stored report's blocking warnings (none for reports made before them);
    a multi-class report's as `class:code`."""
    if report is None:
        return []
    if isinstance(report, MultiClassReport):
        return [f"{name}:{w.code}" for name, w in report.blocking]
    return [w.code for w in report.blocking]


def blocked_reason(codes: list[str]) -> str:
    """Why a calibration with these blocking warnings was not activated, and how to proceed."""
    return (
        f"not activated: the report has blocking warnings ({', '.join(codes)}); read them in "
        "report.warnings, fix the calibration set, or activate anyway with force=true"
    )

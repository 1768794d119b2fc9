"""The typed records the store hands out: thresholds, calibration jobs, their params and reports.

A stored report and a job's params are JSON text in the database; they become typed objects
here and nowhere else, so every reader (the API, the activation gate, drift) gets the same
`CalibrationReport` and `JobParams` instead of re-reading a dict.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from model.calibration import CalibrationReport, MultiClassReport

log = logging.getLogger(__name__)

ThresholdSource = Literal["default", "calibration", "manual"]
JobStatus = Literal["queued", "running", "succeeded", "failed"]


class JobParams(BaseModel):
    """What a calibration job was given beyond its strategy and target, as stored with it.

    Records of earlier releases hold only some of these keys (the first: the data set's name and
    image count); the others then take their defaults, and `published()` leaves them out.
    """

    # Unknown keys of a stored record are dropped rather than failing the read.
    model_config = ConfigDict(frozen=True, extra="ignore")

    cost_fp: float = 1.0
    cost_fn: float = 1.0
    dataset: str = ""
    n_images: int = 0
    force: bool = False  # activate even with blocking warnings
    delta: float | None = None  # fdr_control: the guarantee's 1 - confidence
    recalibrate: str | None = None  # temperature, platt or isotonic: the map fitted with it

    def published(self) -> dict[str, Any]:
        """The params as the API has always shown them: the keys the record holds."""
        return self.model_dump(mode="json", exclude_unset=True)

    def to_json(self) -> str:
        """The params as stored: every key this release writes (delta, recalibrate if given)."""
        absent = {k for k in ("delta", "recalibrate") if getattr(self, k) is None}
        return self.model_dump_json(exclude=absent)

    @classmethod
    def from_json(cls, text: str) -> JobParams:
        """The params of a stored record."""
        return cls.model_validate_json(text)


@dataclass(frozen=True)
class ActiveThreshold:
    """The threshold in force for one model's checkpoint and where it came from."""

    value: float
    source: ThresholdSource
    calibration_id: str | None
    digest: str
    updated: datetime | None
    stale: bool = False  # the database is failing: this is the last value this process knew


@dataclass(frozen=True)
class CalibrationRecord:
    """One calibration job; `report` is loaded only by `get_calibration`."""

    id: str
    model: str
    digest: str
    status: JobStatus
    strategy: str
    target: float | None
    params: JobParams
    activate: bool
    progress: float
    threshold: float | None
    auc: float | None
    error: str | None
    created: datetime
    started: datetime | None
    finished: datetime | None
    report: CalibrationReport | MultiClassReport | None = None  # multi-class: per class


@dataclass(frozen=True)
class ThresholdChange:
    """One entry of a model's threshold audit trail."""

    at: datetime
    model: str
    digest: str
    value: float | None  # None: back to the checkpoint's default, whose value the store never sees
    source: ThresholdSource
    calibration_id: str | None
    previous_value: float | None
    previous_source: ThresholdSource
    actor: str | None
    reason: str | None


def read_report(
    text: str | None, calibration_id: str
) -> CalibrationReport | MultiClassReport | None:
    """A stored report as the typed report, or None: none stored, or not one this release reads.

    The one place a stored report is rebuilt. A row that holds something else (a hand-made or
    damaged record) is logged and read as having no report rather than failing every reader.
    """
    if text is None:
        return None
    try:
        if text.startswith('{"mode"'):  # a multi-class report: `mode` is its first key
            return MultiClassReport.model_validate_json(text)
        return CalibrationReport.model_validate_json(text)
    except ValidationError as error:
        log.warning(
            "calibration %s: its stored report is not a calibration report (%d errors, "
            "first: %s); it is read as having none",
            calibration_id,
            error.error_count(),
            error.errors()[0]["msg"],
        )
        return None

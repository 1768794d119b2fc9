"""The objects a running service holds, created in the lifespan and handed to routes."""

from __future__ import annotations

from dataclasses import dataclass, field

from service.calibration.jobs import CalibrationJobs
from service.inference.drift import DriftMonitor
from service.inference.engine import InferenceEngine
from service.inference.registry import ModelRegistry, ServedModel
from service.ops.metrics import Metrics
from service.settings import Settings
from service.state.store import ActiveThreshold, ThresholdStore
from service.usecases.recalibrated import ExtrasCache


@dataclass
class Services:
    """Everything a request handler may need, in one place on `app.state`."""

    settings: Settings
    registry: ModelRegistry
    store: ThresholdStore
    engine: InferenceEngine
    jobs: CalibrationJobs
    metrics: Metrics
    drift: DriftMonitor
    # What active calibrations add to answers (recalibration map, guarantee), read once each.
    extras: ExtrasCache = field(init=False)

    def __post_init__(self) -> None:
        self.extras = ExtrasCache(self.store)

    def active_threshold(self, served: ServedModel) -> ActiveThreshold:
        """The threshold in force, read from the database now (what a client reads back).

        Stored for this exact checkpoint, else the checkpoint default; StoreFailing while the
        database fails.
        """
        return _or_default(served, self.store.current_threshold(served.name, served.digest))

    async def active_threshold_async(self, served: ServedModel) -> ActiveThreshold:
        """The threshold inference applies: from memory when nothing changed since, never
        waiting on the database on the event loop; while it fails, the last known (`stale`)."""
        stored = await self.store.active_threshold_async(served.name, served.digest)
        if stored is None and self.store.outage.failing:
            return _or_default(served, None, stale=True)
        return _or_default(served, stored)

    def class_thresholds(self, served: ServedModel) -> dict[str, ActiveThreshold]:
        """A multi-class model's threshold in force for each class, in class order, read now."""
        return {
            name: _or_default(
                served, self.store.current_threshold(served.name, served.digest, name), cls=name
            )
            for name in served.classes
        }

    async def class_thresholds_async(self, served: ServedModel) -> dict[str, ActiveThreshold]:
        """Each class's threshold inference applies, as `active_threshold_async` reads one."""
        found = {}
        for name in served.classes:
            stored = await self.store.active_threshold_async(served.name, served.digest, name)
            stale = stored is None and self.store.outage.failing
            found[name] = _or_default(served, stored, stale=stale, cls=name)
        return found


def _or_default(
    served: ServedModel, stored: ActiveThreshold | None, stale: bool = False, cls: str = ""
) -> ActiveThreshold:
    if stored is not None:
        return stored
    return ActiveThreshold(
        value=served.class_defaults[cls] if cls else served.default_threshold,
        source="default",
        calibration_id=None,
        digest=served.digest,
        updated=None,
        stale=stale,
    )

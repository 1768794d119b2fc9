"""A model's threshold: read the one in force, set one by hand, go back to the default.

Every change of the threshold in force is published on the `unet_active_threshold` gauge by
`publish_threshold`: these use cases, the activation of a calibration and the service's start-up
call it; a calibration job that activates its own result when it finishes, one layer below,
sets the same gauge through the same `Metrics.set_threshold`.
"""

from __future__ import annotations

import math

from service.container import Services
from service.inference.registry import ServedModel
from service.ops.metrics import Metrics
from service.state.store import ActiveThreshold


class ThresholdOutOfRange(ValueError):
    """A threshold that is not a finite number inside the model head's output range."""


def check_threshold(served: ServedModel, value: float, name: str = "threshold") -> float:
    """`value` if it is finite and inside the head's output range, else ThresholdOutOfRange."""
    low, high = served.output_range
    if not math.isfinite(value) or not low <= value <= high:
        interval = f"[{low:g}, {high:g}]".replace("inf", "∞")
        raise ThresholdOutOfRange(
            f"{name} {value!r} is outside the {served.head} head's output range {interval} "
            f"of model {served.name!r}; give a finite value inside it"
        )
    return value


def publish_threshold(metrics: Metrics, model: str, active: ActiveThreshold) -> None:
    """Show `active` as `model`'s threshold in force (the `unet_active_threshold` gauge)."""
    metrics.set_threshold(model, active.value)


def default_threshold(served: ServedModel) -> ActiveThreshold:
    """The checkpoint's own threshold, in force when nothing is stored for it."""
    return ActiveThreshold(
        value=served.default_threshold,
        source="default",
        calibration_id=None,
        digest=served.digest,
        updated=None,
    )


def read_threshold(services: Services, served: ServedModel) -> ActiveThreshold:
    """The threshold in force, read from the database now (StoreFailing while it fails)."""
    return services.active_threshold(served)


def set_threshold(
    services: Services, served: ServedModel, value: float, actor: str | None = None
) -> ActiveThreshold:
    """Make `value` the threshold in force (source `manual`); what was written.

    ThresholdOutOfRange names the value `value`, as the client sent it.
    """
    check_threshold(served, value, "value")
    active = services.store.set_manual(served.name, served.digest, value, actor=actor)
    publish_threshold(services.metrics, served.name, active)
    services.metrics.threshold_changed(served.name, "manual")
    return active


def reset_threshold(
    services: Services, served: ServedModel, actor: str | None = None
) -> ActiveThreshold:
    """Drop the stored threshold so that the checkpoint's default applies (also if it did)."""
    services.store.reset_to_default(served.name, served.digest, actor=actor)
    active = default_threshold(served)
    publish_threshold(services.metrics, served.name, active)
    services.metrics.threshold_changed(served.name, "default")
    return active

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


def publish_threshold(metrics: Metrics, model: str, active: ActiveThreshold, cls: str = "") -> None:
    """Show `active` as `model`'s threshold in force (the `unet_active_threshold` gauge; a
    multi-class model's class `cls` on `unet_active_class_threshold`)."""
    metrics.set_threshold(model, active.value, cls)


def publish_thresholds(services: Services, served: ServedModel) -> None:
    """Publish every threshold in force of `served` (each class's for a multi-class model)."""
    if served.multi_class:
        for name, active in services.class_thresholds(served).items():
            publish_threshold(services.metrics, served.name, active, name)
    else:
        publish_threshold(services.metrics, served.name, services.active_threshold(served))


def default_threshold(served: ServedModel, cls: str = "") -> ActiveThreshold:
    """The checkpoint's own threshold (of class `cls`), in force when nothing is stored for it."""
    return ActiveThreshold(
        value=served.class_defaults[cls] if cls else served.default_threshold,
        source="default",
        calibration_id=None,
        digest=served.digest,
        updated=None,
    )


def read_threshold(services: Services, served: ServedModel, cls: str = "") -> ActiveThreshold:
    """The threshold in force (of class `cls`), read from the database now (StoreFailing while
    it fails)."""
    if cls:
        return services.class_thresholds(served)[cls]
    return services.active_threshold(served)


def set_threshold(
    services: Services,
    served: ServedModel,
    value: float,
    actor: str | None = None,
    cls: str = "",
) -> ActiveThreshold:
    """Make `value` the threshold in force (of class `cls`; source `manual`); what was written.

    ThresholdOutOfRange names the value `value`, as the client sent it.
    """
    check_threshold(served, value, "value")
    active = services.store.set_manual(served.name, served.digest, value, actor=actor, cls=cls)
    publish_threshold(services.metrics, served.name, active, cls)
    services.metrics.threshold_changed(served.name, "manual")
    return active


def reset_threshold(
    services: Services, served: ServedModel, actor: str | None = None, cls: str = ""
) -> ActiveThreshold:
    """Drop the stored threshold (of class `cls`) so that the checkpoint's default applies."""
    services.store.reset_to_default(served.name, served.digest, actor=actor, cls=cls)
    active = default_threshold(served, cls)
    publish_threshold(services.metrics, served.name, active, cls)
    services.metrics.threshold_changed(served.name, "default")
    return active

"""The threshold use cases, called directly on a running service's real SQLite store."""

from __future__ import annotations

import pytest

from service.container import Services
from service.inference.registry import ServedModel
from service.ops.metrics import Metrics
from service.state.store import ActiveThreshold
from service.usecases.thresholds import (
    ThresholdOutOfRange,
    check_threshold,
    default_threshold,
    publish_threshold,
    read_threshold,
    reset_threshold,
    set_threshold,
)

SIGMOID, RELU = "unet-sigmoid", "unet-relu"


def gauge(metrics: Metrics, model: str) -> float | None:
    """The `unet_active_threshold` sample of `model`."""
    value = metrics.registry.get_sample_value("unet_active_threshold", {"model": model})
    return value


def model(services: Services, name: str) -> ServedModel:
    """The served model `name`."""
    served = services.registry.get(name)
    assert served is not None
    return served


def test_start_up_publishes_each_models_threshold(services: Services) -> None:
    for name in (SIGMOID, RELU):
        assert gauge(services.metrics, name) == model(services, name).default_threshold


def test_a_manual_threshold_is_stored_read_back_and_published(services: Services) -> None:
    served = model(services, SIGMOID)
    written = set_threshold(services, served, 0.3, actor="ana")
    assert (written.value, written.source, written.digest) == (0.3, "manual", served.digest)
    assert written.updated is not None
    assert read_threshold(services, served) == written
    assert gauge(services.metrics, SIGMOID) == 0.3
    [change] = services.store.history(SIGMOID, limit=10)
    assert (change.value, change.source, change.actor) == (0.3, "manual", "ana")


def test_an_out_of_range_value_changes_nothing(services: Services) -> None:
    served = model(services, SIGMOID)
    with pytest.raises(ThresholdOutOfRange, match=r"value 1\.5 is outside .* \[0, 1\]"):
        set_threshold(services, served, 1.5)
    assert read_threshold(services, served) == default_threshold(served)
    assert gauge(services.metrics, SIGMOID) == served.default_threshold
    assert services.store.history(SIGMOID, limit=10) == []


def test_reset_goes_back_to_the_default_and_publishes_it(services: Services) -> None:
    served = model(services, RELU)
    set_threshold(services, served, 2.5)
    assert gauge(services.metrics, RELU) == 2.5
    back = reset_threshold(services, served, actor="bo")
    assert back == default_threshold(served)
    assert read_threshold(services, served) == back
    assert gauge(services.metrics, RELU) == served.default_threshold
    newest = services.store.history(RELU, limit=10)[0]
    assert (newest.source, newest.previous_value, newest.actor) == ("default", 2.5, "bo")
    # Resetting what is already the default is no error and changes nothing more.
    assert reset_threshold(services, served) == back
    assert len(services.store.history(RELU, limit=10)) == 2


def test_the_range_is_the_heads(services: Services) -> None:
    sigmoid, relu = model(services, SIGMOID), model(services, RELU)
    assert check_threshold(sigmoid, 0.0) == 0.0 and check_threshold(sigmoid, 1.0) == 1.0
    assert check_threshold(relu, 1e9) == 1e9
    for value in (float("nan"), float("inf"), -1e-9):
        with pytest.raises(ThresholdOutOfRange, match=f"threshold {value!r}"):
            check_threshold(relu, value)


def test_publishing_sets_the_gauge_of_that_model_only(services: Services) -> None:
    served = model(services, SIGMOID)
    active = ActiveThreshold(0.61, "calibration", "c1", served.digest, None)
    publish_threshold(services.metrics, SIGMOID, active)
    assert gauge(services.metrics, SIGMOID) == 0.61
    assert gauge(services.metrics, RELU) == model(services, RELU).default_threshold

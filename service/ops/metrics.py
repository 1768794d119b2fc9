"""The service's Prometheus metrics, in a registry of its own.

Every labelled family is present, at zero, from start-up for every model the service knows
(`Metrics.prepare`), so that `increase()` and `rate()` alerts see the first event too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# Queue waits are often zero on an idle service and seconds under load.
WAIT_BUCKETS = (0.0005, 0.001, 0.0025, *LATENCY_BUCKETS)
CALIBRATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600)
# What became of an inference request: 2xx, 4xx (and clients that left), 503, 500.
OUTCOMES = ("ok", "client_error", "overloaded", "error")
CALIBRATION_OUTCOMES = ("succeeded", "failed")
# Who changed a threshold: a calibration's activation, an operator's value, a reset.
THRESHOLD_SOURCES = ("calibration", "manual", "default")
# Where the state database failed (service/state/session.py).
STORE_OPERATIONS = ("read", "write", "commit")
PACKAGE = "unet-service"


def outcome_of(status: int) -> str:
    """The `outcome` label of an answer's HTTP status."""
    if status < 400:
        return "ok"
    if status == 503 or status == 429:
        return "overloaded"
    return "error" if status >= 500 else "client_error"


def package_version() -> str:
    """The installed service package's version ("unknown" when run from a bare checkout)."""
    try:
        return version(PACKAGE)
    except PackageNotFoundError:
        return "unknown"


class ModelAvailability(Collector):
    """`unet_model_available`: read from the registry at every scrape, so it is never stale."""

    def __init__(self) -> None:
        self.source: Callable[[], dict[str, bool]] = dict

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """One sample per known model: 1 while it serves, 0 when it failed to load or warm up."""
        family = GaugeMetricFamily(
            "unet_model_available",
            "1 while the model serves, 0 when it failed to load or warm up",
            labels=["model"],
        )
        for model, available in sorted(self.source().items()):
            family.add_metric([model], 1.0 if available else 0.0)
        yield family


class Metrics:
    """The service's metrics, in a registry of its own so several apps can live in one process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.models: frozenset[str] = frozenset()  # every model the service knows (`prepare`)
        r = self.registry
        # The client library's process_* and python_* collectors, which only its default
        # registry has unless they are registered here too.
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            r.register(collector)
        self.build_info = Gauge(
            "unet_build_info", "The service's version; always 1", ["version"], registry=r
        )
        self.build_info.labels(package_version()).set(1)
        self.availability = ModelAvailability()
        r.register(self.availability)
        self._http(r)
        self._inference(r)
        self._calibration(r)
        self._thresholds(r)
        self._drift(r)
        self.store_errors = Counter(
            "unet_store_errors",
            "State database operations that failed (the database stopped, a full disk)",
            ["operation"],
            registry=r,
        )
        for operation in STORE_OPERATIONS:
            self.store_errors.labels(operation)

    def _http(self, r: CollectorRegistry) -> None:
        self.requests = Counter(
            "unet_http_requests",
            "HTTP requests by route and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "unet_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.abandoned = Counter(
            "unet_abandoned_requests",
            "Requests dropped, their queued work with them, because the client disconnected",
            registry=r,
        )

    def _inference(self, r: CollectorRegistry) -> None:
        self.model_requests = Counter(
            "unet_model_requests",
            "Inference requests (v1 and v2) by model and outcome",
            ["model", "outcome"],
            registry=r,
        )
        self.in_flight = Gauge(
            "unet_in_flight_requests",
            "Inference requests received and not yet answered",
            ["model"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "unet_queue_wait_seconds",
            "Per request: time from queueing to its first forward pass",
            ["model"],
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.compute = Histogram(
            "unet_compute_seconds",
            "Per request: time of the forward passes (batches) that ran its work",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "unet_inference_seconds",
            "Model forward pass time per batch",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "unet_batch_size",
            "Images per forward pass",
            ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )
        self.queue_depth = Gauge(
            "unet_queue_depth", "Images waiting for a forward pass", ["model"], registry=r
        )
        self.queue_waiting = Gauge(
            "unet_queue_waiting",
            "Calibration images waiting for room in a full queue (requests are refused instead)",
            ["model"],
            registry=r,
        )
        self.rejected = Counter(
            "unet_rejected_requests",
            "Requests refused because the queue was full",
            ["model"],
            registry=r,
        )

    def _calibration(self, r: CollectorRegistry) -> None:
        self.calibrations_started = Counter(
            "unet_calibrations_started", "Calibration jobs started", ["model"], registry=r
        )
        self.calibrations_failed = Counter(
            "unet_calibrations_failed", "Calibration jobs that failed", ["model"], registry=r
        )
        self.calibrations_succeeded = Counter(
            "unet_calibrations_succeeded", "Calibration jobs that succeeded", ["model"], registry=r
        )
        self.calibration_duration = Histogram(
            "unet_calibration_duration_seconds",
            "Calibration jobs' running time, from their start to their stored ending",
            ["model", "outcome"],
            buckets=CALIBRATION_BUCKETS,
            registry=r,
        )

    def _thresholds(self, r: CollectorRegistry) -> None:
        self.active_threshold = Gauge(
            "unet_active_threshold", "The threshold in force per model", ["model"], registry=r
        )
        # A series of its own, so the binary models' `unet_active_threshold` keeps its labels.
        self.active_class_threshold = Gauge(
            "unet_active_class_threshold",
            "The threshold in force per class of a multi-class model",
            ["model", "class"],
            registry=r,
        )
        self.threshold_changes = Counter(
            "unet_threshold_changes",
            "Changes of the threshold in force, by who made them",
            ["model", "source"],
            registry=r,
        )

    def _drift(self, r: CollectorRegistry) -> None:
        self.drift_distance = Gauge(
            "unet_drift_score_distance",
            "PSI of served scores against the active calibration's (NaN: no data)",
            ["model"],
            registry=r,
        )
        self.drift_status = Enum(
            "unet_drift_status",
            "Drift of served scores from the active calibration",
            ["model"],
            states=["ok", "warn", "alert", "no_reference"],
            registry=r,
        )
        self.drift_class_distance = Gauge(
            "unet_drift_class_score_distance",
            "PSI of a class's served scores against the active calibration's (NaN: no data)",
            ["model", "class"],
            registry=r,
        )
        self.drift_class_status = Enum(
            "unet_drift_class_status",
            "Drift of a class's served scores from the active calibration",
            ["model", "class"],
            states=["ok", "warn", "alert", "no_reference"],
            registry=r,
        )
        self.drift_foreground = Gauge(
            "unet_drift_foreground_fraction",
            "Mean share of pixels at or above the active calibration's threshold",
            ["model", "source"],
            registry=r,
        )

    def prepare(self, models: Iterable[str], availability: Callable[[], dict[str, bool]]) -> None:
        """Create every per-model series at zero; `availability` says which models serve now."""
        self.availability.source = availability
        self.models = frozenset(models)
        for model in self.models:
            for outcome in OUTCOMES:
                self.model_requests.labels(model, outcome)
            for outcome in CALIBRATION_OUTCOMES:
                self.calibration_duration.labels(model, outcome)
            for source in THRESHOLD_SOURCES:
                self.threshold_changes.labels(model, source)
            for family in (
                self.in_flight,
                self.queue_wait,
                self.compute,
                self.inference,
                self.batch_size,
                self.queue_depth,
                self.queue_waiting,
                self.rejected,
                self.calibrations_started,
                self.calibrations_failed,
                self.calibrations_succeeded,
            ):
                family.labels(model)

    def count_request(self, model: str, status: int) -> None:
        """Count one answered inference request of `model` by its outcome."""
        self.model_requests.labels(model, outcome_of(status)).inc()

    def calibration_ended(self, model: str, outcome: str, seconds: float) -> None:
        """Count a calibration job's ending (`succeeded` or `failed`) and its duration."""
        succeeded = outcome == "succeeded"
        (self.calibrations_succeeded if succeeded else self.calibrations_failed).labels(model).inc()
        self.calibration_duration.labels(model, outcome).observe(seconds)

    def threshold_changed(self, model: str, source: str) -> None:
        """Count one change of `model`'s threshold in force, made by `source`."""
        self.threshold_changes.labels(model, source).inc()

    def store_failed(self, operation: str) -> None:
        """Count one failed state-database `operation` (read, write or commit)."""
        self.store_errors.labels(operation).inc()

    def set_drift(
        self,
        model: str,
        status: str,
        distance: float | None,
        served: float | None,
        calibration: float | None,
        cls: str = "",
    ) -> None:
        """Publish `model`'s drift: its status, PSI and foreground fractions (None: unknown);
        a multi-class model's class `cls` on the class-labelled series."""
        if cls:
            self.drift_class_status.labels(model, cls).state(status)
            psi = math.nan if distance is None else distance
            self.drift_class_distance.labels(model, cls).set(psi)
            return
        self.drift_status.labels(model).state(status)
        self.drift_distance.labels(model).set(math.nan if distance is None else distance)
        for source, value in (("served", served), ("calibration", calibration)):
            self.drift_foreground.labels(model, source).set(math.nan if value is None else value)

    def set_threshold(self, model: str, value: float, cls: str = "") -> None:
        """Publish the threshold now in force for `model` (for class `cls` of a multi-class one)."""
        if cls:
            self.active_class_threshold.labels(model, cls).set(value)
        else:
            self.active_threshold.labels(model).set(value)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

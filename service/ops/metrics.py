"""The service's Prometheus metrics, in a registry of its own."""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """The service's metrics, in a registry of its own so several apps can live in one process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
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
        self.abandoned = Counter(
            "unet_abandoned_requests",
            "Requests dropped, their queued work with them, because the client disconnected",
            registry=r,
        )
        self.calibrations_started = Counter(
            "unet_calibrations_started", "Calibration jobs started", ["model"], registry=r
        )
        self.calibrations_failed = Counter(
            "unet_calibrations_failed", "Calibration jobs that failed", ["model"], registry=r
        )
        self.calibrations_succeeded = Counter(
            "unet_calibrations_succeeded", "Calibration jobs that succeeded", ["model"], registry=r
        )
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

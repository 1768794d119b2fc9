"""The service's Prometheus metrics, in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

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

    def set_threshold(self, model: str, value: float) -> None:
        """Publish the threshold now in force for `model`."""
        self.active_threshold.labels(model).set(value)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

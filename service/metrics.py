"""Prometheus metrics and the middleware that records every request."""

from __future__ import annotations

import logging
import time

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("service.access")

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
        self.rejected = Counter(
            "unet_rejected_requests",
            "Requests refused because the queue was full",
            ["model"],
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


class RequestMetrics:
    """ASGI middleware: count, time and log every request by its route template.

    Plain ASGI rather than `@app.middleware("http")`: Starlette's BaseHTTPMiddleware copies
    every response through a stream and cost about a millisecond per request.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on and record its route, status and duration."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            elapsed = time.perf_counter() - started
            route = _route_label(scope)
            method = scope["method"]
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(elapsed)
            log.info(
                "%s %s %d",
                method,
                scope["path"],
                status,
                extra={"route": route, "status": status, "ms": round(elapsed * 1000, 2)},
            )


def install_metrics(app: FastAPI, metrics: Metrics) -> None:
    """Count, time and log every request; `/metrics` reads `app.state.metrics`."""
    app.state.metrics = metrics
    app.add_middleware(RequestMetrics, metrics=metrics)


def _route_label(scope: Scope) -> str:
    """The matched route's template (`/v1/models/{model}/mask`), never a raw path with values."""
    if "route" in scope:  # FastAPI's routes leave themselves in the scope
        return str(getattr(scope["route"], "path", "unmatched"))
    if "endpoint" in scope and not scope.get("path_params"):
        return str(scope["path"])  # a plain fixed-path route, such as FastAPI's /docs
    return "unmatched"

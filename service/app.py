"""The application factory: settings in, a FastAPI app with its models and stores out."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from anyio import to_thread
from fastapi import FastAPI
from prometheus_client import start_http_server

from model.network.device import pick_device
from service.api.auth import KeyBeforeBody
from service.api.dependencies import require_api_key
from service.api.disconnect import CancelOnDisconnect
from service.api.docs import install_docs
from service.api.errors import install_error_answers
from service.api.middleware import BodySizeLimit, install_metrics
from service.api.oip import install_oip
from service.api.openapi import TAGS, install_openapi, operation_id
from service.api.origin import SameOriginWrites
from service.api.pacing import BodyPacing
from service.api.pages import install_pages
from service.api.problems import install_problem_handlers
from service.api.routes import (
    calibrations,
    drift,
    health,
    inference,
    instances,
    models,
    thresholds,
)
from service.api.security_headers import SecurityHeaders
from service.api.spool import install_spooling
from service.calibration.jobs import CalibrationJobs
from service.container import Services
from service.inference.drift import DriftMonitor
from service.inference.engine import InferenceEngine
from service.inference.precision import apply_precision
from service.inference.registry import ModelRegistry
from service.ops import tracing
from service.ops.logs import configure_logging
from service.ops.metrics import Metrics
from service.settings import Settings
from service.state.drift_windows import DriftWindows
from service.state.integrity import (
    StateUnsound,
    check_before_opening,
    check_opened,
    set_aside_if_damaged,
    store_location,
)
from service.state.store import ThresholdStore
from service.state.writable import why_read_only
from service.usecases.thresholds import publish_thresholds

log = logging.getLogger(__name__)

DESCRIPTION = """
Binary segmentation with U-Nets whose threshold is read off a calibration set's ROC curve.

* **Inference**: `mask`, `probabilities` and `overlay` for any uploaded image.
* **Calibration**: upload a zip of `images/` and `masks/`; the service computes the ROC curve,
  picks a threshold by the strategy you choose, and keeps the report as evidence.
* **Thresholds**: every answer says which threshold it used and where it came from
  (`default`, `calibration`, `manual` or `request`).

Errors are RFC 9457 problem details (`application/problem+json`).
"""


# The service's own request span (service.api.middleware) covers the whole middleware stack,
# refusals included; FastAPI's native one (0.165 on) would be a second server span beside it.
_NO_FASTAPI_SPANS: dict[str, Any] = (
    {"telemetry": {"tracing": False}}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters
    else {}
)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service; models and stores come to life in the lifespan."""
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings)
        tracing.configure_tracing()
        read_only = why_read_only(settings.state_dir)
        if read_only is not None:
            log.warning(
                "state folder %s is read-only (%s): serving inference with the stored "
                "thresholds, refusing every change; make UNET_STATE_DIR writable and restart",
                settings.state_dir,
                read_only,
            )
        # No lock on the state folder: processes sharing it (or a PostgreSQL database)
        # coordinate through the database, so any number of them may serve.
        async with _serving(app, settings, metrics, read_only):
            yield
        tracing.shut_down()

    app = FastAPI(
        title="U-Net segmentation service",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_tags=TAGS,
        generate_unique_id_function=operation_id,
        docs_url=None,  # install_docs serves /docs and /redoc from local assets
        redoc_url=None,
        **_NO_FASTAPI_SPANS,
    )
    install_openapi(app)
    install_problem_handlers(app)
    install_error_answers(app)
    app.add_middleware(
        BodySizeLimit,
        limit_for=lambda path: _body_limit(settings, path),
        pacing=BodyPacing.from_settings(settings),
    )
    routers = [
        module.router
        for module in (health, models, inference, instances, calibrations, thresholds, drift)
    ]
    # Added after the body limit, so it runs before it: no body byte is read without the key.
    app.add_middleware(
        KeyBeforeBody,
        routes=[route for router in routers for route in router.routes],
        settings=settings,
        needs_key=require_api_key,
    )
    # Before the key: a cross-site page's change is refused whether or not a key is set.
    app.add_middleware(SameOriginWrites, allowed_origins=settings.allowed_origins)
    # Outside the key and body checks, inside the metrics: an abandoned request is counted.
    app.add_middleware(CancelOnDisconnect, metrics=metrics)
    install_metrics(app, metrics)
    # Outermost of the service's own: every answer, refusals and 500 problems too, gets them.
    app.add_middleware(SecurityHeaders)
    for router in routers:
        app.include_router(router)
    install_oip(app)  # Open Inference Protocol v2: after the middleware, whose errors it rewrites
    install_docs(app)
    install_pages(app)
    install_spooling(app, settings)
    return app


def _body_limit(settings: Settings, path: str) -> int:
    """Calibration zips may be larger than single images."""
    return (
        settings.max_dataset_bytes if path.endswith("/calibrations") else settings.max_upload_bytes
    )


@asynccontextmanager
async def _serving(
    app: FastAPI, settings: Settings, metrics: Metrics, read_only: str | None
) -> AsyncIterator[None]:
    """Models, store, engine and jobs for the app's lifetime; `read_only`: why no writes."""
    device = pick_device(settings.device)
    registry = await to_thread.run_sync(
        functools.partial(
            ModelRegistry.from_folder,
            settings.model_dir,
            device,
            max_model_bytes=settings.max_model_bytes,
            load_timeout_s=settings.model_load_timeout_s,
        )
    )
    # Before the store: an INT8 model has its own digest, and so its own thresholds.
    await to_thread.run_sync(
        apply_precision,
        registry,
        settings.precision,
        settings.backend,
        device.type,
        settings.state_dir,
    )
    store = await to_thread.run_sync(_open_store, settings, registry, read_only)
    engine = InferenceEngine(registry, settings, metrics)
    jobs = CalibrationJobs(registry, store, engine, settings, metrics)
    # Per process, beside the store: what this process served is what its window counts.
    drift_file = settings.state_dir / "drift.sqlite3"
    if read_only is None:
        await to_thread.run_sync(set_aside_if_damaged, drift_file, "the drift windows")
    drift_windows = DriftWindows(drift_file, read_only=read_only is not None)
    monitor = DriftMonitor(store, drift_windows, settings, metrics)
    services = Services(settings, registry, store, engine, jobs, metrics, monitor)
    app.state.services = services
    store.database.on_failure = metrics.store_failed
    metrics.prepare(
        [*registry.names(), *registry.failures()],
        lambda: (
            {name: True for name in registry.names()} | dict.fromkeys(registry.failures(), False)
        ),
    )
    for served in registry:
        publish_thresholds(services, served)
        if served.multi_class:  # a window per class
            for name, each in services.class_thresholds(served).items():
                monitor.report(served.name, each.calibration_id, name)
        else:
            active = services.active_threshold(served)
            monitor.report(served.name, active.calibration_id)  # restores the window, sets gauges
    scrape = (
        start_http_server(settings.metrics_port, settings.host, registry=metrics.registry)
        if settings.metrics_port is not None
        else None
    )
    # Warm-up runs in the background: /healthz answers at once, /readyz once it is done.
    warmup = asyncio.create_task(engine.start())
    leases = asyncio.create_task(jobs.keep_leases())
    try:
        yield
    finally:
        warmup.cancel()
        leases.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await leases
        await jobs.stop()
        await engine.stop()
        monitor.save_all()
        drift_windows.close()
        store.close()
        if scrape is not None:
            scrape[0].shutdown()
            scrape[0].server_close()


def _open_store(
    settings: Settings, registry: ModelRegistry, read_only: str | None
) -> ThresholdStore:
    """The store with stopped processes' leftovers settled and every model's threshold in memory.

    Run in a worker thread: the database never blocks the event loop. A read-only store settles
    nothing: what it reads is what the last writer left. An unsound database raises StateUnsound.
    """
    location = store_location(settings)
    check_before_opening(location, settings.state_start_fresh, read_only)
    store = ThresholdStore(
        location,
        lease_s=settings.calibration_lease_s,
        read_only_because=read_only,
    )
    try:
        check_opened(store.engine, location, require_head=read_only is None)
    except StateUnsound:
        store.close()
        raise
    if read_only is None:
        interrupted = store.fail_interrupted("the service restarted while this calibration ran")
        if interrupted:
            log.warning("marked %d interrupted calibration(s) failed", interrupted)
    for served in registry:
        if read_only is None:
            store.note_checkpoint(served.name, served.digest)
        store.active_threshold(served.name, served.digest)  # first requests then read memory
    return store

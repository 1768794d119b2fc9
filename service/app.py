"""The application factory: settings in, a FastAPI app with its models and stores out."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from model.train import pick_device
from service.api.docs import install_docs
from service.api.middleware import BodySizeLimit, install_metrics
from service.api.openapi import TAGS, install_openapi, operation_id
from service.api.pages import install_pages
from service.api.problems import install_problem_handlers
from service.api.routes import calibrations, health, inference, models, thresholds
from service.calibration.jobs import CalibrationJobs
from service.container import Services
from service.inference.engine import InferenceEngine
from service.inference.registry import ModelRegistry
from service.ops.logs import configure_logging
from service.ops.metrics import Metrics
from service.settings import Settings
from service.state.lock import StateLock
from service.state.store import ThresholdStore

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


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service; models and stores come to life in the lifespan."""
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings)
        # Held before anything touches the state folder, released after everything has.
        with StateLock(settings.state_dir):
            async with _serving(app, settings, metrics):
                yield

    app = FastAPI(
        title="U-Net segmentation service",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_tags=TAGS,
        generate_unique_id_function=operation_id,
        docs_url=None,  # install_docs serves /docs and /redoc from local assets
        redoc_url=None,
    )
    install_openapi(app)
    install_problem_handlers(app)
    app.add_middleware(BodySizeLimit, limit_for=lambda path: _body_limit(settings, path))
    install_metrics(app, metrics)
    for router in (health, models, inference, calibrations, thresholds):
        app.include_router(router.router)
    install_docs(app)
    install_pages(app)
    return app


def _body_limit(settings: Settings, path: str) -> int:
    """Calibration zips may be larger than single images."""
    return (
        settings.max_dataset_bytes if path.endswith("/calibrations") else settings.max_upload_bytes
    )


@asynccontextmanager
async def _serving(app: FastAPI, settings: Settings, metrics: Metrics) -> AsyncIterator[None]:
    """Models, store, engine and jobs for the app's lifetime."""
    device = pick_device(settings.device)
    registry = ModelRegistry.from_folder(settings.model_dir, device)
    store = ThresholdStore(settings.state_dir / "thresholds.sqlite3")
    interrupted = store.fail_interrupted("the service restarted while this calibration ran")
    if interrupted:
        log.warning("marked %d interrupted calibration(s) failed", interrupted)
    engine = InferenceEngine(registry, settings, metrics)
    jobs = CalibrationJobs(registry, store, engine, settings, metrics)
    services = Services(settings, registry, store, engine, jobs, metrics)
    app.state.services = services
    for served in registry:
        metrics.set_threshold(served.name, services.active_threshold(served).value)
    # Warm-up runs in the background: /healthz answers at once, /readyz once it is done.
    warmup = asyncio.create_task(engine.start())
    try:
        yield
    finally:
        warmup.cancel()
        await jobs.stop()
        await engine.stop()
        store.close()

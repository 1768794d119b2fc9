"""`python -m service`: serve the models in UNET_MODEL_DIR over HTTP."""

from __future__ import annotations

import os

from service.api import server
from service.app import create_app
from service.settings import ENV_PREFIX, Settings


def run(host: str | None = None, port: int | None = None, workers: int | None = None) -> None:
    """Run the service with uvicorn; arguments override UNET_HOST, UNET_PORT and UNET_WORKERS."""
    if workers is not None:
        # Worker processes read their settings from the environment, so it carries the count.
        os.environ[f"{ENV_PREFIX}WORKERS"] = str(workers)
    settings = Settings()
    host, port = host or settings.host, port or settings.port
    if settings.workers > 1:
        server.run_workers("service.app:create_app", settings, host, port)
    else:
        server.run(create_app(settings), settings, host, port)


if __name__ == "__main__":
    run()

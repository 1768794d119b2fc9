"""`python -m service`: serve the models in UNET_MODEL_DIR over HTTP."""

from __future__ import annotations

import uvicorn

from service.app import create_app
from service.settings import Settings


def run(host: str | None = None, port: int | None = None) -> None:
    """Run the service with uvicorn; arguments override UNET_HOST and UNET_PORT."""
    settings = Settings()
    uvicorn.run(
        create_app(settings),
        host=host or settings.host,
        port=port or settings.port,
        log_level=settings.log_level,
        access_log=False,  # requests are logged by the service's own structured middleware
    )


if __name__ == "__main__":
    run()

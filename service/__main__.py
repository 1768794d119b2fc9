"""`python -m service`: serve the models in UNET_MODEL_DIR over HTTP."""

from __future__ import annotations

from service.api import server
from service.app import create_app
from service.settings import Settings


def run(host: str | None = None, port: int | None = None) -> None:
    """Run the service with uvicorn; arguments override UNET_HOST and UNET_PORT."""
    settings = Settings()
    server.run(create_app(settings), settings, host or settings.host, port or settings.port)


if __name__ == "__main__":
    run()

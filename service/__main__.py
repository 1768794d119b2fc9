"""`python -m service`: serve the models in UNET_MODEL_DIR over HTTP."""

from __future__ import annotations

import logging
import os
import sys

from service.ops.environment import unknown_settings
from service.ops.logs import configure_logging
from service.settings import ENV_PREFIX, Settings
from service.state.database import MissingDriver
from service.state.integrity import StateUnsound, check_state

log = logging.getLogger("service")

EXIT_USAGE = 2  # a setting that does not exist, under UNET_STRICT_SETTINGS
EXIT_UNSOUND = 1  # the state database must not be served from: the one line on stderr says why


def run(host: str | None = None, port: int | None = None, workers: int | None = None) -> None:
    """Run the service with uvicorn; arguments override UNET_HOST, UNET_PORT and UNET_WORKERS."""
    if workers is not None:
        # Worker processes read their settings from the environment, so it carries the count.
        os.environ[f"{ENV_PREFIX}WORKERS"] = str(workers)
    settings = Settings()
    host, port = host or settings.host, port or settings.port
    configure_logging(settings, root=True)
    unknown = unknown_settings(os.environ)
    if unknown and settings.strict_settings:
        print(f"unet: cannot start: {'; '.join(unknown)} (UNET_STRICT_SETTINGS)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)
    for message in unknown:
        log.warning(message)
    try:
        check_state(settings)
    except (StateUnsound, MissingDriver) as error:
        # Before uvicorn: a failure in the app's start-up would come with a traceback.
        print(f"unet: cannot start: {error}", file=sys.stderr)
        raise SystemExit(EXIT_UNSOUND) from None
    # Imported after the check: the models' libraries take seconds to load, the check does not.
    from service.api import server
    from service.app import create_app

    if settings.workers > 1:
        server.run_workers("service.app:create_app", settings, host, port)
    else:
        server.run(create_app(settings), settings, host, port)


if __name__ == "__main__":
    run()

"""Structured logs: one line per event, optionally JSON for log collectors.

Every logger goes through one handler on the root logger, uvicorn's included (`log_config`
is handed to uvicorn, which applies it in each worker process too), and every line written while
a request is served carries its `request_id` (service.ops.context).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from service.ops.context import current_request_id
from service.settings import Settings

# Attributes every LogRecord has; anything else was passed in `extra=` and belongs in the line.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}
# Loggers at the configured level; every other library's at warning, so that they stay quiet.
OWN_LOGGERS = ("service", "model", "uvicorn", "uvicorn.error", "uvicorn.access")
PROPAGATING = ("uvicorn.error", "uvicorn.access")  # to "uvicorn", which writes them
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RequestIdFilter(logging.Filter):
    """Adds the request id bound in this context (if any) to the record."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Always keep the record; set its `request_id` unless the caller set one."""
        if not hasattr(record, "request_id"):
            request_id = current_request_id()
            if request_id is not None:
                record.request_id = request_id
        return True


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object, with the fields passed in `extra=`."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON line."""
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class KeyValueFormatter(logging.Formatter):
    """Human-readable lines with the `extra=` fields appended as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a text line."""
        line = super().format(record)
        extras = " ".join(f"{k}={v}" for k, v in vars(record).items() if k not in _STANDARD)
        return f"{line} {extras}" if extras else line


def log_config(settings: Settings) -> dict[str, Any]:
    """`configure_logging(settings, root=True)` as a `dictConfig`: uvicorn applies it, in each
    worker process too, before the app starts."""
    formatter: dict[str, Any] = (
        {"()": f"{__name__}.JsonFormatter"}
        if settings.log_json
        else {"()": f"{__name__}.KeyValueFormatter", "fmt": TEXT_FORMAT}
    )
    handler = {
        "class": "logging.StreamHandler",
        "stream": "ext://sys.stderr",
        "formatter": "service",
        "filters": ["request_id"],
    }
    level = settings.log_level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"service": formatter},
        "filters": {"request_id": {"()": f"{__name__}.RequestIdFilter"}},
        "handlers": {"stderr": handler},
        "loggers": {
            name: {
                "handlers": [] if name in PROPAGATING else ["stderr"],
                "level": level,
                "propagate": name in PROPAGATING,
            }
            for name in OWN_LOGGERS
        },
        "root": {"handlers": ["stderr"], "level": "WARNING"},
    }


def configure_logging(settings: Settings, root: bool = False) -> None:
    """Send the service's, the model's and uvicorn's lines to stderr in the configured format
    and level; with `root` (a process of our own), every other library's warnings too.

    By hand rather than with dictConfig, which would close every handler of the process
    (a test runner's among them).
    """
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(KeyValueFormatter(TEXT_FORMAT))
    handler.addFilter(RequestIdFilter())
    for name in OWN_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers[:] = [] if name in PROPAGATING else [handler]
        logger.setLevel(settings.log_level.upper())
        logger.propagate = name in PROPAGATING
    if root:
        logging.getLogger().handlers[:] = [handler]
        logging.getLogger().setLevel(logging.WARNING)
        # Python's warnings (a library's deprecation) become log lines, JSON when JSON is on.
        logging.captureWarnings(True)

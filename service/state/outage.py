"""Whether the store's database answers, as its last operation found it, and what a failure means.

A database that stops, drops its connections or returns a corrupt file is not a bug of the
service: its errors become StoreFailing (a 503 with Retry-After at the HTTP edge), the outage is
logged once when it begins and once when it ends rather than with a traceback per request, and the
next operation that succeeds ends it (the engine's pre-ping replaces dropped connections, so
reconnection needs nothing more).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from datetime import UTC, datetime

from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    IntegrityError,
    NotSupportedError,
    ProgrammingError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout

from service.state.errors import StoreFailing

log = logging.getLogger(__name__)

# Errors in the statements themselves: the service's own bugs, left to surface as such.
BUGS = (IntegrityError, ProgrammingError, DataError, NotSupportedError)


def is_outage(error: BaseException) -> bool:
    """Whether `error` says the database is away or broken, rather than the query is wrong."""
    if isinstance(error, BUGS):
        return False
    return isinstance(error, DBAPIError | PoolTimeout)


def reason_of(error: SQLAlchemyError) -> str:
    """One line naming the database's own error (SQLAlchemy's wrapping and SQL left out)."""
    cause = error.orig if isinstance(error, DBAPIError) and error.orig is not None else error
    text = " ".join(str(cause).split("\n")[0].split()) or type(cause).__name__
    return f"{type(cause).__name__}: {text}"[:300]


class Outage:
    """The store's database health: failing since when and why, or answering."""

    def __init__(self, where: str) -> None:
        """Healthy until an operation fails; `where` names the database in log lines."""
        self.where = where
        self._lock = threading.Lock()
        self.reason: str | None = None
        self.since: datetime | None = None
        self._began = 0.0
        self.answering_since = -math.inf  # when it last came back from an outage

    @property
    def failing(self) -> bool:
        """Whether the last operation on the database failed."""
        return self.reason is not None

    def failed(self, error: SQLAlchemyError) -> StoreFailing:
        """Record a failure (logged once per outage); the error to raise for it."""
        reason = reason_of(error)
        with self._lock:
            first = self.reason is None
            self.reason = reason
            if first:
                self.since, self._began = datetime.now(UTC), time.monotonic()
        if first:
            log.error(
                "threshold database %s is failing (%s): inference goes on with the last known "
                "thresholds, changes are refused with 503 until it answers again",
                self.where,
                reason,
            )
        return self.error()

    def answered(self) -> None:
        """Record a success: ends an outage (logged) if one was under way."""
        if self.reason is None:
            return
        with self._lock:
            if self.reason is None:
                return
            self.reason, self.since = None, None
            lasted = time.monotonic() - self._began
            self.answering_since = time.monotonic()
        log.warning("threshold database %s answers again after %.1f s", self.where, lasted)

    def error(self, during: str = "read") -> StoreFailing:
        """The StoreFailing for the outage under way, met `during` a read, write or commit."""
        outcome = {
            "read": "try again in a few seconds",
            "write": "nothing was changed: try again in a few seconds",
            "commit": "the change may or may not have been applied: read it back before "
            "trying again",
        }[during]
        return StoreFailing(
            f"the threshold database is failing ({self.reason or 'unknown error'}); {outcome} "
            "(inference goes on with the last known thresholds)"
        )

    def state(self) -> str:
        """`failing since <time>: <why>`, or `answering`."""
        reason, since = self.reason, self.since
        if reason is None or since is None:
            return "answering"
        return f"failing since {since.isoformat(timespec='seconds')}: {reason}"

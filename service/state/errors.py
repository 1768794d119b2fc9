"""The store's errors, in its own terms rather than HTTP's or SQLAlchemy's.

StoreUnavailable and its kinds say why the state folder cannot take a write now; they are raised
by the store and the calibration intake whatever the backend: the HTTP edge answers them
(`service.api.errors`), and a calibration job that meets one fails with its message. StoreError
and its kinds say a request of the store itself cannot be done (an unknown calibration, a step
its status forbids).
"""

from __future__ import annotations

import errno
import sqlite3

FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
READ_ONLY_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
# SQLite's primary result codes; the extended ones keep them in their low byte.
SQLITE_READONLY = 8
SQLITE_FULL = 13


class StoreUnavailable(Exception):
    """The state folder cannot be written; the message says why and what to do."""

    retry_after: int | None = None


class StoreFull(StoreUnavailable):
    """The disk holding the state folder is full."""


class StoreReadOnly(StoreUnavailable):
    """The state folder is read-only (mounted so, or not ours to write)."""


class StoreFailing(StoreUnavailable):
    """The database does not answer, or answers with an error (stopped, unreachable, corrupt).

    Passing: the store reconnects by itself, so trying again later makes sense.
    """

    retry_after = 5


def full(where: str) -> StoreFull:
    """The error for a full disk under `where`, saying what to do about it."""
    return StoreFull(
        f"the disk of UNET_STATE_DIR ({where}) is full; free space there and retry "
        "(the service keeps serving inference meanwhile)"
    )


def read_only(why: str) -> StoreReadOnly:
    """The error for a read-only state folder, with `why` it is."""
    return StoreReadOnly(
        f"the state folder is read-only: {why}; make UNET_STATE_DIR writable and restart "
        "(the service serves inference meanwhile)"
    )


# PostgreSQL's SQLSTATEs for the same two conditions (psycopg sets `sqlstate` on its errors).
PG_DISK_FULL = "53100"
PG_READ_ONLY_TRANSACTION = "25006"


def unavailable(error: BaseException, where: str) -> StoreUnavailable | None:
    """The StoreUnavailable that `error` (OSError, SQLite or PostgreSQL error) means, else None."""
    sqlstate = getattr(error, "sqlstate", None)
    if sqlstate == PG_DISK_FULL:
        return full(where)
    if sqlstate == PG_READ_ONLY_TRANSACTION:
        return read_only(str(error))
    if isinstance(error, sqlite3.Error):
        code = (getattr(error, "sqlite_errorcode", 0) or 0) & 0xFF
        if code == SQLITE_FULL:
            return full(where)
        if code == SQLITE_READONLY:
            return read_only(str(error))
        return None
    if isinstance(error, OSError):
        if error.errno in FULL_ERRNOS:
            return full(where)
        if error.errno == errno.EROFS:
            return read_only(f"{error.strerror}: {error.filename or where}")
    return None


class StoreError(Exception):
    """The store cannot do what was asked; the message says why."""


class CalibrationNotFound(StoreError, LookupError):
    """No calibration with that id for that model."""


class InvalidTransition(StoreError):
    """The calibration's status does not allow this step (e.g. finishing a failed job)."""


class ActivationError(StoreError):
    """A calibration cannot become the active threshold: not succeeded, or another checkpoint."""

"""The store's one database handle, shared by its repositories: reads, serialised writes, outages.

Every repository (`jobs`, `thresholds`, `history`) goes through `StateDatabase.read()` and
`.write()`, so the translation of a database's failures into the store's errors happens here
once: a full disk or a read-only folder becomes StoreUnavailable, a database that does not answer
StoreFailing (service/state/outage.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, select, update
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from service.state.database import WRITE, database_url, open_read_only
from service.state.errors import StoreError, read_only, unavailable
from service.state.migrate import NewerSchema, upgrade
from service.state.outage import Outage, is_outage
from service.state.tables import state_version as VERSION


def now_text() -> str:
    """Now, as the store writes times: ISO 8601 in UTC, to the microsecond."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def finite(value: float, what: str) -> float:
    """`value` as a float; ValueError naming `what` if it is NaN or infinite."""
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, not {value!r}")
    return value


class StateDatabase:
    """A SQLite file or a database URL, opened (created and upgraded as needed) for the store."""

    def __init__(
        self,
        location: Path | str,
        read_only_because: str | None,
        open_engine: Callable[[str], Engine],
    ) -> None:
        """Open `location` with `open_engine(url)`; see ThresholdStore for `read_only_because`."""
        self.location = location
        self.path = Path(location) if isinstance(location, Path) else None
        self.read_only_because = read_only_because
        # Told the operation (read, write, commit) of every failure: the store-error counter.
        self.on_failure: Callable[[str], None] = lambda operation: None
        if read_only_because is not None and self.path is not None:
            self.engine = open_read_only(self.path)
            self.writer = self.engine
            self.outage = Outage(str(self.path))
            return
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.engine = open_engine(database_url(location))
        self.writer = self.engine.execution_options(**{WRITE: True})
        self.outage = Outage(
            str(self.path) if self.path else self.engine.url.render_as_string(hide_password=True)
        )
        try:
            upgrade(self.engine)
        except NewerSchema as error:
            self.engine.dispose()
            raise StoreError(f"{location}: {error}") from None

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection for reads; a failing database raises StoreFailing."""
        try:
            with self.engine.connect() as db:
                yield db
        except SQLAlchemyError as error:
            if not is_outage(error):
                raise
            self.on_failure("read")
            raise self.outage.failed(error) from error
        self.outage.answered()

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A transaction serialised against every other write, so its reads cannot go stale.

        The one place where a full disk or a read-only folder becomes StoreUnavailable, and a
        failing database StoreFailing.
        """
        if self.read_only_because is not None:
            raise read_only(self.read_only_because)
        committing = False
        try:
            with self.writer.connect() as db, db.begin():
                yield db
                committing = True  # leaving the block commits
        except (DBAPIError, OSError) as error:
            cause = (error.orig or error) if isinstance(error, DBAPIError) else error
            where = str(self.path.parent) if self.path is not None else "the database"
            translated = unavailable(cause, where)
            operation = "commit" if committing else "write"
            if translated is not None:
                self.on_failure(operation)
                raise translated from error
            if not is_outage(error):
                raise
            assert isinstance(error, DBAPIError)
            self.on_failure(operation)
            self.outage.failed(error)
            raise self.outage.error(operation) from error
        except SQLAlchemyError as error:
            if not is_outage(error):
                raise
            self.on_failure("commit" if committing else "write")
            self.outage.failed(error)
            raise self.outage.error("commit" if committing else "write") from error
        self.outage.answered()

    def version(self) -> Any:
        """The shared threshold version counter, read now."""
        with self.read() as db:
            return db.execute(select(VERSION.c.version).where(VERSION.c.id == 1)).scalar_one()

    @staticmethod
    def bump(db: Connection) -> int:
        """In a threshold-changing write: move the shared version on; returns the new one."""
        db.execute(update(VERSION).where(VERSION.c.id == 1).values(version=VERSION.c.version + 1))
        return int(db.execute(select(VERSION.c.version).where(VERSION.c.id == 1)).scalar_one())

    def close(self) -> None:
        """Close the idle connections (call once no other thread uses the store)."""
        self.engine.dispose()

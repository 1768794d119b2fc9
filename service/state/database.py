"""Where the store lives: a SQLAlchemy engine for SQLite (a file) or PostgreSQL (a URL).

Both databases get the same two kinds of transaction. A read is one statement. A write is
serialised against every other write, in every process: SQLite's `BEGIN IMMEDIATE` takes the
file's write lock at once, PostgreSQL's transaction-scoped advisory lock does the same for the
database, so a write's reads (the previous threshold it audits) can never go stale.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import StaticPool

from service.state.tables import metadata

log = logging.getLogger(__name__)

WRITE = "unet_write"  # the execution option that makes a transaction a serialised write
WRITE_LOCK_KEY = 0x756E6574  # PostgreSQL advisory lock id of the store's writes ("unet")
CONNECT_TIMEOUT_S = 5


class MissingDriver(RuntimeError):
    """The database named by the URL needs a driver that is not installed."""


def database_url(location: Path | str) -> str:
    """A SQLAlchemy URL: a path is a SQLite file; `postgresql://` URLs use psycopg 3."""
    if isinstance(location, Path):
        return f"sqlite:///{location}"
    for prefix in ("postgresql://", "postgres://"):
        if location.startswith(prefix):
            return "postgresql+psycopg://" + location[len(prefix) :]
    return location


def open_engine(url: str) -> Engine:
    """An engine whose write transactions are serialised across processes."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"timeout": 30, "check_same_thread": False}, pool_size=8
        )
        event.listen(engine, "connect", _sqlite_connected)
        event.listen(engine, "begin", _sqlite_begin)
    else:
        if url.startswith("postgresql+psycopg") and importlib.util.find_spec("psycopg") is None:
            raise MissingDriver(
                "UNET_DATABASE_URL names PostgreSQL, whose driver is not installed: "
                'pip install "unet-service[postgres]"'
            )
        # pre_ping: a connection the database dropped (a restart, a failover) is replaced
        # before use instead of failing a request.
        # connect_timeout: a database that does not answer at all (a dropped network) fails
        # a try in seconds rather than holding a request for the kernel's TCP timeout.
        timeout = {} if "connect_timeout" in url else {"connect_timeout": CONNECT_TIMEOUT_S}
        engine = create_engine(
            url, pool_pre_ping=True, pool_size=4, max_overflow=8, connect_args=timeout
        )
        event.listen(engine, "begin", _postgres_begin)
    return engine


def _sqlite_connected(dbapi_connection: Any, record: Any) -> None:
    # The driver's own transaction handling is off: a read is one autocommitted statement, a
    # write opens its transaction in `_sqlite_begin`.
    dbapi_connection.isolation_level = None
    # WAL: readers never wait for a writer, in this process or another. FULL also fsyncs the
    # WAL at every commit, so an acknowledged change survives a power cut; writes are rare.
    dbapi_connection.execute("PRAGMA journal_mode=WAL")
    dbapi_connection.execute("PRAGMA synchronous=FULL")
    dbapi_connection.execute("PRAGMA foreign_keys=ON")


def _sqlite_begin(connection: Connection) -> None:
    if connection.get_execution_options().get(WRITE):
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _postgres_begin(connection: Connection) -> None:
    if connection.get_execution_options().get(WRITE):
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({WRITE_LOCK_KEY})")


def open_read_only(path: Path) -> Engine:
    """An engine that reads the SQLite file at `path` as it is, or an empty stand-in in memory.

    For a state folder that cannot be written: nothing is created or upgraded there.
    """
    # mode=ro still needs the WAL index (-shm), which a cleanly closed database no longer has
    # and a read-only folder cannot create; immutable=1 reads the file without it.
    for query in ("mode=ro", "mode=ro&immutable=1"):
        engine = create_engine(
            f"sqlite:///file:{path.resolve()}?{query}&uri=true",
            connect_args={"check_same_thread": False},
            poolclass=StaticPool,
        )
        try:
            with engine.connect() as db:
                db.exec_driver_sql("SELECT count(*) FROM active_thresholds").fetchone()
            return engine
        except DBAPIError as error:
            engine.dispose()
            log.info("cannot read %s with %s: %s", path, query, error)
    log.warning("%s is unreadable; every model runs on its default threshold", path)
    engine = create_engine(
        "sqlite://", connect_args={"check_same_thread": False}, poolclass=StaticPool
    )
    metadata.create_all(engine)
    return engine

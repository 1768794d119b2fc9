"""Is the state database sound? Asked before the service opens it and by `unet state check`.

A SQLite file that is empty, truncated, not a database or damaged stops start-up with one line
saying what is wrong and how to recover, because opening it anyway would serve the checkpoints'
defaults as if no threshold had ever been set (an empty file is a valid empty database to
SQLite). Both backends also get a schema check: a revision this release does not know, or a
table or column the store needs that is missing, stops start-up the same way.

A brand-new database is created whole (header written, then linked into place), so an empty
`thresholds.sqlite3` never means "being created right now", only "something emptied it".
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import struct
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from service.settings import Settings
from service.state.database import database_url, open_engine
from service.state.migrate import MIGRATIONS
from service.state.tables import metadata
from service.state.writable import why_read_only

log = logging.getLogger(__name__)

MAGIC = b"SQLite format 3\x00"
HEADER_BYTES = 100
# SQLite's primary result codes for a file that is not, or no longer, a database.
SQLITE_CORRUPT = 11
SQLITE_NOTADB = 26
SQLITE_BUSY, SQLITE_LOCKED = 5, 6
SIDE_FILES = ("-wal", "-shm")  # SQLite's companions of a WAL-mode database file
START_FRESH = "UNET_STATE_START_FRESH"
UNREADABLE = "check the file's owner and permissions, and that no process holds it locked"


class StateUnsound(Exception):
    """The state database cannot be served from; the one-line message says why and what to do."""


@dataclass(frozen=True)
class Finding:
    """What a check of one database found: `problem` is None when it is sound."""

    problem: str | None
    damaged: bool = False  # the file itself is bad (moving it aside is the remedy)
    revision: str | None = None
    remedy: str | None = None  # when it is not the usual restore-or-move-aside
    readable: bool = True  # False: it could not be read at all (permissions, locks, network)


def store_location(settings: Settings) -> Path | str:
    """The database URL when one is set, else the SQLite file in the state folder."""
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    return settings.state_dir / "thresholds.sqlite3"


def describe(location: Path | str) -> str:
    """The database as messages name it: the file, or the URL without its password."""
    if isinstance(location, Path):
        return str(location)
    return make_url(location).render_as_string(hide_password=True)


def recovery(location: Path | str) -> str:
    """How to recover from an unsound database, in one clause."""
    if isinstance(location, Path):
        return (
            "stop every process using it, then restore a backup over it (`unet state backup` "
            f"makes them) or move it aside to start with no stored thresholds ({START_FRESH}=true "
            "moves it aside for you)"
        )
    return (
        "restore the database from a backup (`pg_dump` makes them) or point UNET_DATABASE_URL at "
        "an empty one"
    )


def unsound(location: Path | str, finding: Finding) -> StateUnsound:
    """The start-up error for what `finding` found wrong with the database at `location`."""
    remedy = finding.remedy or recovery(location)
    return StateUnsound(f"state database {describe(location)} {finding.problem}; {remedy}")


# SQLite files ---------------------------------------------------------------------------------


def check_file(path: Path, thorough: bool = False) -> Finding:
    """What is wrong with the existing SQLite file at `path`; `thorough`: full integrity_check.

    A quick check reads every page once (milliseconds for a threshold store); the thorough one
    also cross-checks every index.
    """
    try:
        with path.open("rb") as file:
            header = file.read(HEADER_BYTES)
            size = os.fstat(file.fileno()).st_size
    except OSError as error:
        return Finding(f"cannot be read ({error.strerror})", remedy=UNREADABLE, readable=False)
    if size == 0:
        return Finding(
            "is empty (0 bytes): every stored threshold, calibration and history entry is gone "
            "from it",
            damaged=True,
        )
    if not header.startswith(MAGIC[: len(header)]):
        return Finding("is not a SQLite database (its header is damaged)", damaged=True)
    if size < HEADER_BYTES:
        return Finding(f"is truncated ({size} of at least {HEADER_BYTES} bytes)", damaged=True)
    found = _check_pages(path, thorough)
    # Read without SQLite's locks, the header's page count may run ahead of the file while a
    # live process checkpoints; so it only names the damage that SQLite itself found.
    expected = _expected_size(header)
    if found.damaged and expected is not None and path.stat().st_size < expected:
        return Finding(f"is truncated ({path.stat().st_size} of {expected} bytes)", damaged=True)
    return found


def _expected_size(header: bytes) -> int | None:
    """Page size x page count from a complete header, when the header vouches for its count."""
    (page_size,) = struct.unpack(">H", header[16:18])
    page_size = 65536 if page_size == 1 else page_size
    changes, pages = struct.unpack(">II", header[24:32])
    (valid_for,) = struct.unpack(">I", header[92:96])
    # The count is only trusted by SQLite itself when written by the same change as the header.
    return page_size * pages if pages and changes == valid_for else None


def _check_pages(path: Path, thorough: bool) -> Finding:
    pragma = "integrity_check" if thorough else "quick_check"
    error: Exception | None = None
    # mode=ro needs the WAL index (-shm), which a read-only folder may not let SQLite create;
    # immutable=1 reads the main file alone (what a cleanly stopped service left). A file
    # that is busy (locked by a live writer) is never read that way: it could look torn.
    for query in ("mode=ro", "mode=ro&immutable=1"):
        try:
            db = sqlite3.connect(f"file:{path.resolve()}?{query}", uri=True, timeout=30)
            try:
                rows = [row[0] for row in db.execute(f"PRAGMA {pragma}(1)")]
                found = schema_finding(_raw_tables(db), _revisions(db), require_head=False)
            finally:
                db.close()
        except sqlite3.DatabaseError as failed:
            code = (getattr(failed, "sqlite_errorcode", 0) or 0) & 0xFF
            if code in (SQLITE_CORRUPT, SQLITE_NOTADB):
                what = "is not a SQLite database" if code == SQLITE_NOTADB else "is damaged"
                return Finding(f"{what} ({failed})", damaged=True)
            error = failed
            if code in (SQLITE_BUSY, SQLITE_LOCKED):
                break
            continue
        if rows != ["ok"]:
            # SQLite's first complaint, on one line ("*** in database main ***\nPage 3: ...").
            detail = " ".join(rows[0].replace("*** in database main ***", "").split())
            return Finding(f"is damaged ({pragma}: {detail})", damaged=True)
        return found
    return Finding(f"cannot be read ({error})", remedy=UNREADABLE, readable=False)


def _raw_tables(db: sqlite3.Connection) -> dict[str, set[str]]:
    names = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    return {name: {row[1] for row in db.execute(f'PRAGMA table_info("{name}")')} for name in names}


def _revisions(db: sqlite3.Connection) -> set[str] | None:
    try:
        return {row[0] for row in db.execute("SELECT version_num FROM alembic_version")}
    except sqlite3.OperationalError:
        return None  # no such table: a first-release file, or a new one


# Both backends --------------------------------------------------------------------------------


def known_revisions() -> tuple[set[str], str]:
    """Every schema revision this release knows, and the newest (its head)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    scripts = ScriptDirectory.from_config(config)
    return {script.revision for script in scripts.walk_revisions()}, str(scripts.get_current_head())


def schema_finding(
    tables: dict[str, set[str]], revisions: set[str] | None, require_head: bool
) -> Finding:
    """Whether tables (name -> columns) and recorded revisions are a schema this release serves.

    Any known revision is fine before an upgrade, as is none (a new or first-release database);
    after one (`require_head`) it must be the newest. At the newest, every table and column the
    store reads must be there.
    """
    known, head = known_revisions()
    revision = ", ".join(sorted(revisions)) if revisions else None
    if revisions and revisions - known:
        return Finding(
            f"was written by a newer version of the service (schema {revision})",
            revision=revision,
            remedy="upgrade the service, or restore a backup that this version wrote",
        )
    if revisions != {head}:
        if require_head:
            return Finding(f"is at schema {revision}, not {head}", revision=revision)
        return Finding(None, revision=revision)
    for table in metadata.sorted_tables:
        if table.name not in tables:
            return Finding(f"lacks the table {table.name}", damaged=True, revision=revision)
        missing = {column.name for column in table.columns} - tables[table.name]
        if missing:
            return Finding(
                f"lacks the column(s) {', '.join(sorted(missing))} of table {table.name}",
                damaged=True,
                revision=revision,
            )
    return Finding(None, revision=revision)


def check_connection(db: Connection, require_head: bool) -> Finding:
    """The schema check over a SQLAlchemy connection (SQLite or PostgreSQL)."""
    inspector = inspect(db)
    tables = {
        name: {column["name"] for column in inspector.get_columns(name)}
        for name in inspector.get_table_names()
    }
    revisions = None
    if "alembic_version" in tables:
        revisions = {
            row[0] for row in db.exec_driver_sql("SELECT version_num FROM alembic_version")
        }
    return schema_finding(tables, revisions, require_head)


def check_url(location: str) -> Finding:
    """The schema check of the database at `location` (a URL), without changing anything."""
    engine = open_engine(database_url(location))
    try:
        with engine.connect() as db:
            return check_connection(db, require_head=False)
    except DBAPIError as error:
        reason = str(error.orig or error).strip().splitlines()[0]
        return Finding(
            f"cannot be read ({reason})",
            remedy="check that the server is up and that UNET_DATABASE_URL names it",
            readable=False,
        )
    finally:
        engine.dispose()


# Start-up -------------------------------------------------------------------------------------


def prepare_file(path: Path, start_fresh: bool, read_only_because: str | None) -> None:
    """Make the SQLite file at `path` fit to open, or raise StateUnsound saying why it is not.

    No file: a writable folder gets a new, empty database. A damaged file stops start-up, unless
    `start_fresh` moves it aside (with its -wal and -shm) and a new one takes its place.
    """
    if not path.exists():
        if read_only_because is None:
            create_empty(path)
        return
    finding = check_file(path)
    if finding.problem is None:
        return
    if not finding.readable:
        return  # not known to be damaged: the store opens it or says why, as it always has
    if not finding.damaged or not start_fresh:
        raise unsound(path, finding)
    if read_only_because is not None:
        raise StateUnsound(
            f"state database {path} {finding.problem}; {START_FRESH} cannot move it aside: the "
            f"state folder is read-only ({read_only_because}); make it writable or restore a "
            "backup over the file"
        )
    moved = move_aside(path)
    log.warning(
        "%s: state database %s %s; moved it aside to %s and started with no stored thresholds",
        START_FRESH,
        path,
        finding.problem,
        moved,
    )
    create_empty(path)


def move_aside(path: Path) -> Path:
    """Rename `path` (and its -wal, -shm) to `NAME.damaged-<UTC time>.sqlite3`; the new name."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.stem}.damaged-{stamp}{path.suffix}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.stem}.damaged-{stamp}-{n}{path.suffix}")
    # The side files first: a WAL left beside a new database would be replayed into it.
    for side in SIDE_FILES:
        companion = path.with_name(path.name + side)
        if companion.exists():
            companion.rename(target.with_name(target.name + side))
    with contextlib.suppress(FileNotFoundError):  # another process starting fresh moved it
        path.rename(target)
    return target


def create_empty(path: Path) -> None:
    """A new empty WAL-mode database at `path`: whole or not at all, never replacing one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".new", dir=path.parent)
    os.close(handle)
    staged = Path(name)
    try:
        db = sqlite3.connect(staged)
        try:
            db.execute("PRAGMA journal_mode=WAL")  # writes the header page
        finally:
            db.close()
        with contextlib.suppress(FileExistsError):  # another process made it first: as good
            os.link(staged, path)
    finally:
        for leftover in (staged, *(staged.with_name(staged.name + s) for s in SIDE_FILES)):
            leftover.unlink(missing_ok=True)


def check_before_opening(
    location: Path | str, start_fresh: bool, read_only_because: str | None
) -> None:
    """Raise StateUnsound when the database at `location` must not be opened as it is.

    A SQLite file is checked page by page (see `prepare_file`); a PostgreSQL database gets the
    schema check. A database that cannot be reached is left to the store to report.
    """
    if isinstance(location, Path):
        prepare_file(location, start_fresh, read_only_because)
        return
    finding = check_url(location)
    # An unreachable server is the store's to report (and to wait out).
    if finding.problem is not None and finding.readable:
        raise unsound(location, finding)


def check_opened(engine: Engine, location: Path | str, require_head: bool) -> None:
    """Raise StateUnsound when the opened (`require_head`: and upgraded) schema is not whole."""
    with engine.connect() as db:
        finding = check_connection(db, require_head)
    if finding.problem is not None:
        raise unsound(location, finding)


def set_aside_if_damaged(path: Path, what: str) -> Path | None:
    """Move a damaged, disposable SQLite file aside (logged, `what` it held); the new name.

    For caches such as the drift windows, which are rebuilt from traffic: losing one is cheaper
    than not starting. An empty file is left alone: SQLite creates its tables in it.
    """
    if not path.exists() or path.stat().st_size == 0:
        return None
    finding = check_file(path)
    if not finding.damaged:
        return None
    moved = move_aside(path)
    log.warning("%s %s; moved it aside to %s: %s start empty", path, finding.problem, moved, what)
    return moved


def check_state(settings: Settings) -> None:
    """Before serving: raise StateUnsound when the state database must not be served from.

    Run once by `python -m service` before any worker starts (and before the models load), so
    the operator reads one line at once, and only one process moves a damaged file aside.
    """
    read_only = why_read_only(settings.state_dir)
    check_before_opening(store_location(settings), settings.state_start_fresh, read_only)

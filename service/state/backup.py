"""`unet state backup`: a consistent copy of a live SQLite state database, checked before use.

SQLite's online backup API copies the database page by page while the service keeps serving
(and writing); the copy is written beside its destination, checked with integrity_check, and
only then renamed into place, so a backup file that exists is a whole, sound database.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service.state.integrity import SIDE_FILES, check_file, describe, unsound


class BackupError(ValueError):
    """The backup cannot be made; the message says why and what to do."""


def backup_target(destination: Path, source: Path) -> Path:
    """The file to write: `destination`, or a time-stamped name inside it when it is a folder."""
    if destination.is_dir():
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        return destination / f"{source.stem}-{stamp}{source.suffix}"
    return destination


def backup(source: Path, destination: Path) -> dict[str, Any]:
    """Copy the live database `source` to `destination` (a new file or a folder); a summary."""
    if not source.exists():
        raise BackupError(f"no state database at {source}; set UNET_STATE_DIR or pass --file")
    found = check_file(source)
    if found.problem is not None:
        raise BackupError(str(unsound(source, found)))
    target = backup_target(destination, source)
    if target.exists():
        raise BackupError(f"{target} exists; name a new file or a folder to write into")
    if not target.parent.is_dir():
        raise BackupError(f"{target.parent} is not a folder; create it first")
    started = time.perf_counter()
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(handle)
    staged = Path(name)
    try:
        # mode=ro: the backup never writes the live database; it reads a snapshot through WAL.
        live = sqlite3.connect(f"file:{source.resolve()}?mode=ro", uri=True, timeout=30)
        copy = sqlite3.connect(staged)
        try:
            live.backup(copy)
            # One self-contained file: the copy's WAL goes into it before it is closed.
            copy.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            copy.close()
            live.close()
        checked = check_file(staged, thorough=True)
        if checked.problem is not None:
            raise BackupError(f"the copy of {describe(source)} {checked.problem}; nothing written")
        try:
            os.link(staged, target)  # never replaces a file that appeared meanwhile
        except FileExistsError:
            raise BackupError(f"{target} exists; name a new file") from None
    finally:
        for leftover in (staged, *(staged.with_name(staged.name + s) for s in SIDE_FILES)):
            leftover.unlink(missing_ok=True)
    return {
        "source": str(source),
        "backup": str(target),
        "bytes": target.stat().st_size,
        "revision": checked.revision,
        "integrity": "ok",
        "seconds": round(time.perf_counter() - started, 3),
    }

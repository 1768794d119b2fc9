"""Where each model's drift window waits out a restart: one JSON row per model in SQLite.

It lives in `$UNET_STATE_DIR/drift.sqlite3`, apart from the threshold store: each process
watches its own traffic, whatever database the store uses. A lost window costs only
a few minutes of re-collected traffic, so it is written with `synchronous=NORMAL`: safe against
a killed process, without an fsync per save.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS drift_windows (
    model          TEXT PRIMARY KEY,
    calibration_id TEXT NOT NULL,
    state          TEXT NOT NULL,
    updated        TEXT NOT NULL
);
"""


class DriftWindows:
    """Saves and loads each model's drift window (a JSON-able dict) by model name."""

    def __init__(self, path: Path, read_only: bool = False) -> None:
        """Open the database at `path` (the threshold store's) and create the table if needed.

        A read-only state folder keeps the windows in memory: drift is still watched, and what
        it saw is lost at the next restart, as a folder that cannot be written must lose it.
        """
        where = ":memory:" if read_only else path
        self._db = sqlite3.connect(where, timeout=30, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()  # one connection, used from worker threads and the loop

    def save(self, model: str, calibration_id: str, state: dict[str, Any]) -> None:
        """Replace `model`'s saved window."""
        with self._lock:
            self._db.execute(
                "INSERT INTO drift_windows (model, calibration_id, state, updated)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (model) DO UPDATE SET"
                " calibration_id = excluded.calibration_id, state = excluded.state,"
                " updated = excluded.updated",
                (model, calibration_id, json.dumps(state), datetime.now(UTC).isoformat()),
            )

    def load(self, model: str) -> tuple[str, dict[str, Any]] | None:
        """`model`'s saved (calibration id, window), or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT calibration_id, state FROM drift_windows WHERE model = ?", (model,)
            ).fetchone()
        return None if row is None else (row[0], json.loads(row[1]))

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

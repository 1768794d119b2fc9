"""Whether this process may write its state folder, asked once at start-up."""

from __future__ import annotations

import tempfile
from pathlib import Path

from service.state.errors import FULL_ERRNOS, READ_ONLY_ERRNOS


def why_read_only(folder: Path) -> str | None:
    """Why `folder` (created if need be) cannot be written, or None when it can."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # A file that is never linked into the folder: nothing is left behind either way.
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        if error.errno in FULL_ERRNOS:
            return None  # writable, only full: each write says so when it fails
        if error.errno not in READ_ONLY_ERRNOS:
            raise
        return f"{error.strerror} ({error.filename or folder})"
    return None

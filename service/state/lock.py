"""One service process per state folder, held with an advisory file lock.

A process owns its state folder: at start-up it marks unfinished calibrations failed and clears
the uploads folder, and it keeps the active thresholds in memory. A second process on the same
folder would break the first one's calibrations and serve thresholds the other had changed, so
it refuses to start instead. The lock is `flock(2)` on `service.lock`: the kernel drops it when
the process exits, however it exits, so a crash never leaves a stale lock behind.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import TracebackType

try:
    import fcntl
except ImportError:  # not POSIX: no lock, as before
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

LOCK_NAME = "service.lock"


class StateFolderBusy(RuntimeError):
    """Another live process holds the state folder."""


class StateLock:
    """An exclusive hold on a state folder for this process's lifetime (a context manager)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._fd: int | None = None

    def __enter__(self) -> StateLock:
        """Take the folder, or raise StateFolderBusy naming the process that has it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is None:
            log.warning("no file locking on this platform: run one process per state folder")
        else:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise StateFolderBusy(
                    f"state folder {self.folder} is in use by another service process "
                    f"(pid {holder}); give this one its own UNET_STATE_DIR or stop the other"
                ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Let the folder go (closing the file releases the lock)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

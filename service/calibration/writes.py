"""How a calibration job writes to the store: to the end even when cancelled, and through outages.

A database outage does not end a job: progress is not recorded meanwhile, and the writes the job
needs wait for the database up to STORE_WAIT_S.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

from service.state.errors import StoreFailing
from service.state.store import ThresholdStore

PROGRESS_EVERY_S = 0.5
PROGRESS_STEP = 0.05
IMAGES_SHARE = 0.95  # of the progress bar; building the report takes the rest
STORE_RETRY_S = 1.0  # how often a job that met a full disk or a failing database tries again
STORE_WAIT_S = 120.0  # how long a job waits for a failing database before it fails
T = TypeVar("T")


async def write_through(write: Callable[[], T]) -> T:
    """`write()` in a worker thread, waited for to its end even when the job is cancelled.

    A cancelled job then marks itself failed only after its last write has landed: a claim of
    the run (`mark_running`) still under way would otherwise overwrite the failure.
    """
    pending = asyncio.ensure_future(asyncio.to_thread(write))
    try:
        return await asyncio.shield(pending)
    except asyncio.CancelledError:
        await asyncio.wait([pending])
        raise


async def until_stored(write: Callable[[], T]) -> T:
    """`write_through(write)`, tried again while the database fails, for up to STORE_WAIT_S."""
    deadline = time.monotonic() + STORE_WAIT_S
    while True:
        try:
            return await write_through(write)
        except StoreFailing:
            if time.monotonic() >= deadline:
                raise
        await asyncio.sleep(STORE_RETRY_S)


class Progress:
    """Writes a job's progress to the store, at most every PROGRESS_EVERY_S or PROGRESS_STEP.

    Progress is a hint: while the database fails it is not recorded, and the job goes on.
    """

    def __init__(self, store: ThresholdStore, calibration_id: str, total: int) -> None:
        """For the job `calibration_id` of `total` images, nothing written yet."""
        self.store, self.id, self.total = store, calibration_id, total
        self.written, self.at = 0.0, time.monotonic()

    async def __call__(self, done: int) -> None:
        """`done` images are counted: write the progress if it moved enough or long enough ago."""
        value = IMAGES_SHARE * done / self.total
        now = time.monotonic()
        if now - self.at >= PROGRESS_EVERY_S or value - self.written >= PROGRESS_STEP:
            try:
                await write_through(lambda: self.store.jobs.set_progress(self.id, value))
            except StoreFailing:
                self.at = now  # the store logged the outage; try again at the next tick
                return
            self.written, self.at = value, now

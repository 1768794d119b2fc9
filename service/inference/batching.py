"""Dynamic batching: a bounded queue per model and dispatchers that gather jobs into batches.

A job is one request split into `units` pieces of work (one for an ordinary image, one per tile
for a large one). Units whose jobs share a `key` (the input shape) may run in one forward pass, so
a batch never pads one image to another's size and batched results equal single-image ones.
Dispatchers first take a compute slot (one per worker thread, shared by all models), then gather
up to `max_batch` units, waiting at most `wait_s` for more to arrive. While every slot is busy, new
jobs pile up in the queue, so batches grow exactly when the load does.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from service.ops.metrics import Metrics


class QueueFull(Exception):
    """The queue holds `queue_size` jobs already; `retry_after` is a guess in whole seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"queue full; retry after {retry_after} s")
        self.retry_after = retry_after


class Stopped(Exception):
    """The batcher stopped before the job was answered."""


@dataclass(frozen=True)
class BatchLimits:
    """How the engine batches: resolved from the settings and the device."""

    max_batch: int
    wait_s: float
    workers: int
    queue_size: int


class Job:
    """One request waiting for the model: `units` pieces of work that batch with equal `key`s."""

    def __init__(self, key: Hashable, units: int = 1) -> None:
        self.key = key
        self.units = units
        self.claimed = 0  # units handed to a batch so far
        # Set on the event loop, read by worker threads: a plain bool is atomic under the GIL.
        self.cancelled = False
        self.future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()


Unit = tuple[Job, int]
# Runs in a worker thread: the batch's units in, the jobs it finished (result or error) out.
Execute = Callable[[list[Unit]], list[tuple[Job, Any]]]


class Batcher:
    """The queue of one model and the dispatcher tasks that run its jobs in batches."""

    def __init__(
        self,
        name: str,
        limits: BatchLimits,
        execute: Execute,
        executor: Executor,
        slots: asyncio.Semaphore,
        metrics: Metrics,
    ) -> None:
        self.name = name
        self.limits = limits
        self._execute = execute
        self._executor = executor
        self._slots = slots
        self._metrics = metrics
        self._queue: deque[Job] = deque()
        self._arrived = asyncio.Event()
        self._freed = asyncio.Event()  # set when the queue has room again
        self._stopped = False
        self._tasks: list[asyncio.Task[None]] = []
        self._seconds_per_job = 0.1  # running estimate, for Retry-After

    def start(self) -> None:
        """Start one dispatcher per worker thread."""
        self._tasks = [
            asyncio.create_task(self._dispatch(), name=f"batcher-{self.name}-{i}")
            for i in range(self.limits.workers)
        ]

    async def stop(self) -> None:
        """Stop dispatching and fail every queued job and every submitter waiting for room."""
        self._stopped = True
        self._freed.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        while self._queue:
            job = self._queue.popleft()
            if not job.future.done():
                job.future.set_exception(Stopped("the engine stopped"))
        self._queue_changed()

    @property
    def depth(self) -> int:
        """Jobs waiting (not yet fully handed to a batch)."""
        return len(self._queue)

    def check_room(self) -> None:
        """Raise QueueFull when `queue_size` jobs wait already."""
        if len(self._queue) >= self.limits.queue_size:
            self._metrics.rejected.labels(self.name).inc()
            raise QueueFull(self.retry_after())

    def submit(self, job: Job) -> None:
        """Queue `job`, or raise QueueFull when `queue_size` jobs wait already."""
        self.check_room()
        self._queue.append(job)
        self._queue_changed()
        self._arrived.set()

    async def wait_for_room(self) -> None:
        """Until the queue has room for one more job; Stopped when the batcher stops first.

        For work that must wait its turn rather than be refused (calibration images): it is not
        counted as rejected, but as waiting (`unet_queue_waiting`).
        """
        if self._stopped:
            raise Stopped("the engine stopped")
        if len(self._queue) < self.limits.queue_size:
            return
        waiting = self._metrics.queue_waiting.labels(self.name)
        waiting.inc()
        try:
            while len(self._queue) >= self.limits.queue_size:
                self._freed.clear()
                await self._freed.wait()
                if self._stopped:
                    raise Stopped("the engine stopped")
        finally:
            waiting.dec()

    async def submit_waiting(self, job: Job) -> None:
        """Queue `job` as soon as the queue has room; Stopped when the batcher stops first."""
        await self.wait_for_room()
        self.submit(job)  # no await since the wait: the room is still there

    def cancel(self, job: Job) -> None:
        """Drop `job`: its unstarted units never run and its result is discarded."""
        self._drop(job)
        if not job.future.done():
            job.future.cancel()

    def _drop(self, job: Job) -> None:
        job.cancelled = True
        if job in self._queue:
            self._queue.remove(job)
            self._queue_changed()

    def retry_after(self) -> int:
        """Whole seconds until the queue has likely drained enough to take a new job."""
        waiting = (len(self._queue) + 1) * self._seconds_per_job / self.limits.workers
        return max(1, min(60, math.ceil(waiting)))

    async def _dispatch(self) -> None:
        while True:
            await self._wait_for_work()
            async with self._slots:
                batch = await self._gather()
                if batch:
                    await self._run(batch)

    async def _wait_for_work(self) -> None:
        while not self._queue:
            self._arrived.clear()
            await self._arrived.wait()

    async def _gather(self) -> list[Unit]:
        """Up to max_batch units with the key of the oldest job, waiting at most wait_s."""
        if not self._queue:  # another dispatcher took it while this one waited for a slot
            return []
        key = self._queue[0].key
        batch = self._take(key, self.limits.max_batch)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.wait_s
        while len(batch) < self.limits.max_batch:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)
            batch += self._take(key, self.limits.max_batch - len(batch))
        return batch

    def _take(self, key: Hashable, wanted: int) -> list[Unit]:
        """Claim up to `wanted` units of queued jobs with `key`, oldest first."""
        units: list[Unit] = []
        for job in list(self._queue):
            if len(units) == wanted:
                break
            if job.key != key:
                continue
            count = min(wanted - len(units), job.units - job.claimed)
            units += [(job, job.claimed + i) for i in range(count)]
            job.claimed += count
            if job.claimed == job.units:
                self._queue.remove(job)
        self._queue_changed()
        return units

    async def _run(self, batch: list[Unit]) -> None:
        self._metrics.batch_size.labels(self.name).observe(len(batch))
        jobs = list(dict.fromkeys(job for job, _ in batch))
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            finished = await loop.run_in_executor(self._executor, self._execute, batch)
        except asyncio.CancelledError:
            # Stopping: the thread finishes on its own, but nobody will read its result.
            self._settle([(job, Stopped("the engine stopped")) for job in jobs])
            raise
        except Exception as error:  # a failed batch fails its jobs, never the dispatcher
            finished = [(job, error) for job in jobs]
        elapsed = time.perf_counter() - started
        self._seconds_per_job = 0.8 * self._seconds_per_job + 0.2 * elapsed / len(jobs)
        self._settle(finished)

    def _settle(self, finished: list[tuple[Job, Any]]) -> None:
        for job, result in finished:
            if job.future.done():  # cancelled or timed out meanwhile
                continue
            if isinstance(result, BaseException):
                self._drop(job)  # a failed job's remaining units must not run
                job.future.set_exception(result)
            else:
                job.future.set_result(result)

    def _queue_changed(self) -> None:
        self._metrics.queue_depth.labels(self.name).set(len(self._queue))
        if len(self._queue) < self.limits.queue_size:
            self._freed.set()

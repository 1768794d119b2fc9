"""Dynamic batching: a bounded queue per model, and worker threads that take batches from it.

A job is one request split into `units` pieces of work (one for an ordinary image, one per tile
for a large one). Units whose jobs share a `key` (the input shape) may run in one forward pass, so
a batch never pads one image to another's size and batched results equal single-image ones.

The event loop only queues jobs and settles their futures. The worker threads (one per compute
slot, shared by every model) take a model's oldest job's key, claim up to `max_batch` units with it,
waiting at most `wait_s` for more to arrive, run the batch, hand the results to the loop and go
straight on to the next batch. While every worker is busy, new jobs pile up in the queue, so
batches grow exactly when the load does. A worker never waits for the event loop between passes:
on a small CPU under load, each thread wake-up and loop turn per pass cost the forward passes
about a tenth of their throughput (docs/benchmarks.md, "ONNX Runtime").

Models take turns: a free worker serves the next model, in a fixed rotation, that has work and
holds fewer than `model_workers` workers, so a slow model's backlog (a large image is many units)
delays another model's request by at most one batch, and while `model_workers` is below
`workers` a worker is always left for the other models.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from service.ops import tracing
from service.ops.context import Origin, bound_request_ids
from service.ops.metrics import Metrics

log = logging.getLogger(__name__)


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
    model_workers: int = 0  # most workers one model's batches hold at once; 0: every worker

    @property
    def per_model(self) -> int:
        """Workers one model may hold at once."""
        return min(self.model_workers, self.workers) if self.model_workers else self.workers


def model_worker_cap(setting: int | None, workers: int, models: int) -> int:
    """Workers one model may hold: the setting, else one fewer than all when others are served.

    With several models, leaving one worker free means a request for one model never waits for
    another model's passes, however slow they are; a lone model may use every worker.
    """
    if setting is not None:
        return min(setting, workers)
    return max(1, workers - 1) if models > 1 else workers


class Job:
    """One request waiting for the model: `units` pieces of work that batch with equal `key`s.

    `kind` says what its times count towards: a `request`'s queue wait and compute time are
    observed per request, `background` work (calibration images) counts only in the per-batch
    figures, and `warmup` passes in none.
    """

    def __init__(self, key: Hashable, units: int = 1) -> None:
        self.key = key
        self.units = units
        self.claimed = 0  # units handed to a batch so far (changed under the pool's lock)
        # Set on the event loop, read by worker threads: a plain bool is atomic under the GIL.
        self.cancelled = False
        self.future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.kind = "request"
        self.origin = Origin()  # the request's id and span, for the worker's logs and spans
        self.queued_ns = 0  # wall clock (ns) when queued; set by Batcher.submit
        self.started_ns = 0  # when its first unit went into a batch (under the pool's lock)
        self.compute_s = 0.0  # time of the batches that ran its units so far
        self.queue_traced = False  # its queue span is recorded (worker threads only)


Unit = tuple[Job, int]
# Runs in a worker thread: the batch's units in, the jobs it finished (result or error) out.
Execute = Callable[[list[Unit]], list[tuple[Job, Any]]]


class WorkerPool:
    """`workers` threads shared by every model's Batcher: each runs one batch at a time.

    A free worker takes a batch from the next model in rotation that has queued work and holds
    fewer than its `per_model` workers, not from the model whose job is oldest: one model's
    backlog then delays another's work by one batch at most.
    """

    def __init__(self, workers: int, name: str = "inference") -> None:
        self.workers = workers
        self.name = name
        self.lock = threading.Condition()  # guards every batcher's queue and the stop flag
        self.batchers: list[Batcher] = []
        self._turn = 0  # index of the batcher whose turn is next
        self._stopping = False
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Start the worker threads."""
        self._threads = [
            threading.Thread(target=self._work, name=f"{self.name}_{i}", daemon=True)
            for i in range(self.workers)
        ]
        for thread in self._threads:
            thread.start()

    def add(self, batcher: Batcher) -> None:
        """Serve `batcher`'s queue too."""
        with self.lock:
            self.batchers.append(batcher)

    def startable(self) -> bool:
        """Whether a free worker could start a batch now (work waits below its model's cap)."""
        return any(batcher.startable() for batcher in self.batchers)

    def crowded(self) -> bool:
        """Whether a pass starting now will soon have company: work waits that will run beside it.

        Work of a model capped at one worker, which holds it, runs only after that model's pass.
        """
        return any(batcher.crowds() for batcher in self.batchers)

    def stop(self) -> None:
        """Let running batches finish, start no other and wait for the threads (blocking)."""
        with self.lock:
            self._stopping = True
            self.lock.notify_all()
        for thread in self._threads:
            thread.join()
        self._threads = []

    def _work(self) -> None:
        finished: Batcher | None = None  # the model of the batch this worker just ran
        while True:
            with self.lock:
                if finished is not None:
                    finished.running -= 1  # under the same lock as the next pick: one trip
                picked = self._next_batch()
                while picked is None:
                    if self._stopping:
                        return
                    self.lock.wait()
                    picked = self._next_batch()
            finished, batch = picked
            finished.run(batch)

    def _next_batch(self) -> tuple[Batcher, list[Unit]] | None:
        """The next model in rotation with startable work, and a batch of its units.

        Called holding the lock. The worker counts against the model's cap from here until its
        batch has run, including while it waits for the batch to fill.
        """
        if self._stopping:
            return None
        count = len(self.batchers)
        for step in range(count):
            index = (self._turn + step) % count
            batcher = self.batchers[index]
            if batcher.startable():
                self._turn = index + 1
                batcher.running += 1
                batch = batcher.gather(self.lock)
                if self.startable():
                    # What this batch left, or a model this worker has just stopped holding at
                    # its cap, is another worker's.
                    self.lock.notify()
                return batcher, batch
        return None


class Batcher:
    """The queue of one model: jobs in from the event loop, batches out to the worker pool."""

    def __init__(
        self,
        name: str,
        limits: BatchLimits,
        execute: Execute,
        pool: WorkerPool,
        metrics: Metrics,
    ) -> None:
        self.name = name
        self.limits = limits
        self.queue: deque[Job] = deque()
        self.stopped = False
        self.running = 0  # workers holding a batch of this model (changed under the pool's lock)
        self._execute = execute
        self._pool = pool
        self._metrics = metrics
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._freed = asyncio.Event()  # set when the queue has room again
        self._room_waiters = 0
        self._seconds_per_job = 0.1  # running estimate, for Retry-After
        pool.add(self)

    # On the event loop ----------------------------------------------------------------------

    async def stop(self) -> None:
        """Stop taking work and fail every queued job and every submitter waiting for room."""
        with self._pool.lock:
            self.stopped = True
            queued, self.queue = list(self.queue), deque()
        self._freed.set()
        for job in queued:
            if not job.future.done():
                job.future.set_exception(Stopped("the engine stopped"))
        self._queue_changed()

    @property
    def depth(self) -> int:
        """Jobs waiting (not yet fully handed to a batch)."""
        return len(self.queue)

    def check_room(self) -> None:
        """Raise QueueFull when `queue_size` jobs wait already."""
        if len(self.queue) >= self.limits.queue_size:
            self._metrics.rejected.labels(self.name).inc()
            raise QueueFull(self.retry_after())

    def submit(self, job: Job) -> None:
        """Queue `job`, or raise QueueFull when `queue_size` jobs wait already."""
        if self.stopped:
            raise Stopped("the engine stopped")
        self.check_room()
        job.queued_ns = time.time_ns()
        with self._pool.lock:
            self.queue.append(job)
            self._pool.lock.notify()  # wakes one idle worker, if there is one
        self._queue_changed()

    async def wait_for_room(self) -> None:
        """Until the queue has room for one more job; Stopped when the batcher stops first.

        For work that must wait its turn rather than be refused (calibration images): it is not
        counted as rejected, but as waiting (`unet_queue_waiting`).
        """
        if self.stopped:
            raise Stopped("the engine stopped")
        if len(self.queue) < self.limits.queue_size:
            return
        waiting = self._metrics.queue_waiting.labels(self.name)
        waiting.inc()
        self._room_waiters += 1  # before the check below: a worker that frees room then sees it
        try:
            while len(self.queue) >= self.limits.queue_size:
                self._freed.clear()
                await self._freed.wait()
                if self.stopped:
                    raise Stopped("the engine stopped")
        finally:
            self._room_waiters -= 1
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

    def retry_after(self) -> int:
        """Whole seconds until the queue has likely drained enough to take a new job."""
        waiting = (len(self.queue) + 1) * self._seconds_per_job / self.limits.per_model
        return max(1, min(60, math.ceil(waiting)))

    def _drop(self, job: Job) -> None:
        with self._pool.lock:
            job.cancelled = True
            with contextlib.suppress(ValueError):
                self.queue.remove(job)
        self._queue_changed()

    def _settle(self, finished: list[tuple[Job, Any]]) -> None:
        for job, result in finished:
            if job.future.done():  # cancelled or timed out meanwhile
                continue
            if job.kind == "request":  # one observation of each per request
                self._metrics.queue_wait.labels(self.name).observe(
                    (job.started_ns - job.queued_ns) / 1e9
                )
                self._metrics.compute.labels(self.name).observe(job.compute_s)
            if isinstance(result, BaseException):
                self._drop(job)  # a failed job's remaining units must not run
                job.future.set_exception(result)
            else:
                job.future.set_result(result)

    # In a worker thread ---------------------------------------------------------------------

    def startable(self) -> bool:
        """Whether a free worker may start a batch of this model now (under the pool's lock)."""
        return bool(self.queue) and not self.stopped and self.running < self.limits.per_model

    def crowds(self) -> bool:
        """Whether this model's queued work will start beside passes now running."""
        if not self.queue or self.stopped:
            return False
        return self.running < self.limits.per_model or self.limits.per_model > 1

    def gather(self, lock: threading.Condition) -> list[Unit]:
        """Up to max_batch units with the oldest job's key, waiting at most wait_s for more.

        Called holding `lock`, which the wait releases so that jobs can arrive.
        """
        key = self.queue[0].key
        batch = self._take(key, self.limits.max_batch)
        deadline = time.monotonic() + self.limits.wait_s
        while len(batch) < self.limits.max_batch and not self.stopped:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            lock.wait(remaining)
            batch += self._take(key, self.limits.max_batch - len(batch))
        return batch

    def _take(self, key: Hashable, wanted: int) -> list[Unit]:
        """Claim up to `wanted` units of queued jobs with `key`, oldest first (under the lock)."""
        units: list[Unit] = []
        for job in list(self.queue):
            if len(units) == wanted:
                break
            if job.key != key:
                continue
            count = min(wanted - len(units), job.units - job.claimed)
            if not job.claimed:
                job.started_ns = time.time_ns()
            units += [(job, job.claimed + i) for i in range(count)]
            job.claimed += count
            if job.claimed == job.units:
                self.queue.remove(job)
        if units:
            self._queue_changed()
        return units

    def run(self, batch: list[Unit]) -> None:
        """Run one batch and hand its jobs' results (or its error) to the event loop."""
        jobs = list(dict.fromkeys(job for job, _ in batch))
        if any(job.kind != "warmup" for job in jobs):
            self._metrics.batch_size.labels(self.name).observe(len(batch))
        started, started_ns = time.perf_counter(), time.time_ns()
        with bound_request_ids(job.origin.request_id for job in jobs):
            log.debug("batch of %d unit(s) for model %s", len(batch), self.name)
            try:
                finished = self._execute(batch)
            except Exception as error:  # a failed batch fails its jobs, never the worker
                finished = [(job, error) for job in jobs]
        elapsed = time.perf_counter() - started
        self._seconds_per_job = 0.8 * self._seconds_per_job + 0.2 * elapsed / len(jobs)
        for job in jobs:
            job.compute_s += elapsed
        self._trace(jobs, len(batch), started_ns, started_ns + int(elapsed * 1e9))
        if finished:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
                self._loop.call_soon_threadsafe(self._settle, finished)

    def _trace(self, jobs: list[Job], size: int, start_ns: int, end_ns: int) -> None:
        """Each traced job's queue span (at its first batch) and this batch's inference span,
        linked to every request in the batch."""
        spans = [job.origin.span for job in jobs]
        if not any(spans):
            return
        for job in jobs:
            if job.origin.span is None:
                continue
            if not job.queue_traced:
                tracing.record_span(job.origin.span, "queue", job.queued_ns, job.started_ns)
                job.queue_traced = True
            tracing.record_span(
                job.origin.span,
                "inference",
                start_ns,
                end_ns,
                links=spans,
                **{"unet.model": self.name, "unet.batch_size": size, "unet.requests": len(jobs)},
            )

    # Either side ----------------------------------------------------------------------------

    def _queue_changed(self) -> None:
        self._metrics.queue_depth.labels(self.name).set(len(self.queue))
        if self._room_waiters and len(self.queue) < self.limits.queue_size:
            if threading.get_ident() == self._loop_thread:
                self._freed.set()
            else:
                with contextlib.suppress(RuntimeError):
                    self._loop.call_soon_threadsafe(self._freed.set)

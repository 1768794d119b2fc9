"""Calibration jobs: an uploaded data set in, a stored report (and maybe a new threshold) out.

Each model has one worker thread, so its jobs run one at a time and never on the event loop. The
job's record in the threshold store is the only state a client sees; this module keeps just the
futures and temporary folders of the jobs it runs. Every temporary folder is removed when its job
ends, whatever the ending, and once more at start-up for what a killed process left behind.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import CancelledError as FutureCancelled
from concurrent.futures import Future, ThreadPoolExecutor, wait
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from anyio import to_thread

from model.calibrate import calibrate_model
from model.calibration import CalibrationError, CalibrationReport, Criterion
from model.data import DatasetError, load_pair
from model.predict import Prediction
from service.api.problems import ProblemError
from service.calibration.gate import reference_auc
from service.calibration.intake import Dataset, extract_dataset, relative
from service.inference.engine import InferenceEngine
from service.inference.registry import ModelRegistry, ServedModel
from service.ops.metrics import Metrics
from service.settings import Settings
from service.state.store import StoreError, ThresholdStore

log = logging.getLogger(__name__)

MAX_PENDING = 16  # per model: queued jobs hold extracted data sets on disk
STOP_WAIT_S = 10.0
PROGRESS_EVERY_S = 0.5
PROGRESS_STEP = 0.05
IMAGES_SHARE = 0.95  # of the progress bar; building the report takes the rest
INTERNAL_ERROR = "internal error; this is a bug in the service and it has been logged"
STOPPED_QUEUED = "the service stopped before this calibration started; start it again"
STOPPED_RUNNING = "the service stopped while this calibration ran; start it again"
# The engine's answers that mean "not now": its queue is full, the wait ran out, or it is
# warming up. A calibration image then waits its turn like any client would.
ENGINE_BUSY = {"overloaded", "inference-timeout", "not-ready"}
ENGINE_RETRY_S = 0.2
POLL_S = 0.5  # how often a job waiting on the engine checks whether the service is stopping


@dataclass(frozen=True)
class CalibrationParams:
    """What a client asked for: how to choose the threshold, and whether to activate it."""

    criterion: Criterion
    activate: bool = True
    force: bool = False  # activate even with blocking warnings


@dataclass
class _Job:
    id: str
    served: ServedModel
    params: CalibrationParams
    workdir: Path
    dataset: Dataset
    future: Future[None] | None = None


class _Stopped(Exception):
    """The service is stopping: the running job gives up between two images or while waiting."""


class _Progress:
    """Writes a job's progress to the store, at most every PROGRESS_EVERY_S or PROGRESS_STEP."""

    def __init__(self, store: ThresholdStore, calibration_id: str, total: int) -> None:
        self.store, self.id, self.total = store, calibration_id, total
        self.written, self.at = 0.0, time.monotonic()

    def __call__(self, done: int) -> None:
        value = IMAGES_SHARE * done / self.total
        now = time.monotonic()
        if now - self.at >= PROGRESS_EVERY_S or value - self.written >= PROGRESS_STEP:
            self.store.set_progress(self.id, value)
            self.written, self.at = value, now


class CalibrationJobs:
    """Starts, runs and stops the calibration jobs of every served model."""

    def __init__(
        self,
        registry: ModelRegistry,
        store: ThresholdStore,
        engine: InferenceEngine,
        settings: Settings,
        metrics: Metrics,
    ) -> None:
        """Ready to run jobs; clears what a previous process left in the uploads folder."""
        self.registry, self.store, self.engine = registry, store, engine
        self.settings, self.metrics = settings, metrics
        self.uploads = settings.state_dir / "uploads"
        # Jobs left queued or running by a killed process were marked failed before this runs,
        # so nothing here belongs to a live job.
        shutil.rmtree(self.uploads, ignore_errors=True)
        self.uploads.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._executors: dict[str, ThreadPoolExecutor] = {}
        self._jobs: dict[str, _Job] = {}
        self._stopping = threading.Event()
        self._loop = asyncio.get_running_loop()  # the engine's; jobs run in their own threads

    async def start(
        self, served: ServedModel, data: bytes, filename: str | None, params: CalibrationParams
    ) -> str:
        """Check and extract the zip in `data`, queue a job and return its id; 4xx if unusable."""
        self._refuse_if_busy(served)
        # One worker-thread call from temporary folder to queued job: a cancelled request then
        # either leaves a job that owns the folder or no folder at all.
        return await to_thread.run_sync(self._prepare, served, data, filename, params)

    def _prepare(
        self, served: ServedModel, data: bytes, filename: str | None, params: CalibrationParams
    ) -> str:
        workdir = Path(tempfile.mkdtemp(prefix="calibration-", dir=self.uploads))
        try:
            dataset = extract_dataset(data, workdir / "data", self.settings)
            return self._submit(served, params, workdir, dataset, filename)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise

    def _refuse_if_busy(self, served: ServedModel) -> None:
        if self._stopping.is_set():
            raise ProblemError(
                503,
                "Service stopping",
                "the service is shutting down; start the calibration again once it is back",
                slug="stopping",
                headers={"Retry-After": "5"},
            )
        with self._lock:
            pending = sum(job.served.name == served.name for job in self._jobs.values())
        if pending >= MAX_PENDING:
            raise ProblemError(
                429,
                "Too many calibrations",
                f"model {served.name!r} already has {pending} calibrations queued or running; "
                "wait for one to finish",
                slug="too-many-calibrations",
                headers={"Retry-After": "10"},
            )

    def _submit(
        self,
        served: ServedModel,
        params: CalibrationParams,
        workdir: Path,
        dataset: Dataset,
        filename: str | None,
    ) -> str:
        self._refuse_if_busy(served)  # again: extraction took a while
        record: dict[str, Any] = {
            "cost_fp": params.criterion.cost_fp,
            "cost_fn": params.criterion.cost_fn,
            "dataset": (filename or "")[:255],
            "n_images": len(dataset.pairs),
            "force": params.force,
        }
        calibration_id = self.store.create_calibration(
            served.name,
            served.digest,
            params.criterion.strategy,
            params.criterion.target,
            record,
            params.activate,
        )
        job = _Job(calibration_id, served, params, workdir, dataset)
        with self._lock:
            executor = self._executors.get(served.name)
            if executor is None:
                executor = ThreadPoolExecutor(1, thread_name_prefix=f"calibrate-{served.name}")
                self._executors[served.name] = executor
            try:
                job.future = executor.submit(self._run, job)
            except RuntimeError:  # the executor was shut down: the service is stopping
                self.store.fail_calibration(calibration_id, STOPPED_QUEUED)
                raise ProblemError(
                    503, "Service stopping", STOPPED_QUEUED, slug="stopping"
                ) from None
            self._jobs[calibration_id] = job
        self.metrics.calibrations_started.labels(served.name).inc()
        log.info(
            "calibration %s of model %s queued: %s, %d images",
            calibration_id,
            served.name,
            params.criterion.strategy,
            len(dataset.pairs),
        )
        return calibration_id

    async def stop(self) -> None:
        """Fail queued jobs, ask running ones to stop, and wait a little for them."""
        self._stopping.set()
        with self._lock:
            jobs = list(self._jobs.values())
            executors = list(self._executors.values())
            self._executors.clear()
        running: list[Future[None]] = []
        for job in jobs:
            assert job.future is not None
            if job.future.cancel():
                self._fail(job, STOPPED_QUEUED)
                self._forget(job)
            else:
                running.append(job.future)
        if running:
            _, left = await to_thread.run_sync(lambda: wait(running, STOP_WAIT_S))
            if left:
                log.warning("%d calibration(s) still running at shutdown", len(left))
        for executor in executors:
            executor.shutdown(wait=False)

    def _run(self, job: _Job) -> None:
        """The whole life of one job, in its model's worker thread."""
        name = job.served.name
        if self._stopping.is_set():  # picked up between `stop` cancelling the others and now
            self._fail(job, STOPPED_QUEUED)
            self._forget(job)
            return
        try:
            self.store.mark_running(job.id)
            started = time.monotonic()
            report = self._calibrate(job)
            # A blocked report is stored but not activated; its record says why (gate.py).
            activate = job.params.activate and (job.params.force or not report.blocking)
            active = self.store.finish_calibration(
                job.id, report.to_dict(), report.threshold, report.auc, activate=activate
            )
            if active is not None:
                self.metrics.set_threshold(name, active.value)
            self.metrics.calibrations_succeeded.labels(name).inc()
            log.info(
                "calibration %s of model %s succeeded in %.1f s: threshold %.6g, AUC %.4f%s",
                job.id,
                name,
                time.monotonic() - started,
                report.threshold,
                report.auc,
                ", now active" if active is not None else "",
            )
        except _Stopped:
            self._fail(job, STOPPED_RUNNING)
        except (DatasetError, CalibrationError) as error:
            self._fail(job, relative(str(error), job.workdir / "data"))
        except (torch.OutOfMemoryError, MemoryError):
            log.exception("calibration %s of model %s ran out of memory", job.id, name)
            self._fail(job, "the service ran out of memory; calibrate with smaller images")
        except Exception:
            log.exception("calibration %s of model %s failed", job.id, name)
            self._fail(job, INTERNAL_ERROR)
        finally:
            self._forget(job)

    def _calibrate(self, job: _Job) -> CalibrationReport:
        """The report of one job: the model over every pair, counted into one histogram."""
        served, params = job.served, job.params
        progress = _Progress(self.store, job.id, len(job.dataset.pairs))

        def pairs() -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
            # Errors name temporary paths; `_run` rewrites them as paths inside the zip.
            for image_path, mask_path in job.dataset.pairs:
                image, mask = load_pair(
                    image_path, mask_path, served.in_channels, self.settings.max_image_pixels
                )
                yield image_path.name, image, mask

        def on_image(done: int) -> None:
            progress(done)
            if self._stopping.is_set():
                raise _Stopped

        # Every image goes through the engine (large ones in tiles), so memory stays bounded
        # and the threshold fits the outputs that clients will get.
        return calibrate_model(
            served.network,
            pairs(),
            params.criterion,
            on_image=on_image,
            predict_fn=lambda _network, image: self._predict(served, image),
            reference_auc=reference_auc(served, self.store),
        )

    def _predict(self, served: ServedModel, image: np.ndarray) -> Prediction:
        """One image through the inference engine, exactly as a client's image goes.

        Same device, precision (autocast), tiling and share of the CPU cores as served answers,
        so the threshold is read off the scores clients get, and a calibration takes its turn
        in the engine's queue instead of competing with live traffic for the cores.
        """
        while True:
            try:
                return self._wait(
                    asyncio.run_coroutine_threadsafe(self.engine.predict(served, image), self._loop)
                )
            except ProblemError as error:
                if error.slug == "out-of-memory":
                    raise MemoryError(error.detail) from None
                if error.slug not in ENGINE_BUSY:
                    raise
            if self._stopping.wait(ENGINE_RETRY_S):
                raise _Stopped

    def _wait(self, pending: Future[Prediction]) -> Prediction:
        """The engine's answer, or _Stopped as soon as the service is stopping."""
        while True:
            try:
                return pending.result(timeout=POLL_S)
            except FutureTimeout:
                if self._stopping.is_set():
                    pending.cancel()
                    raise _Stopped from None
            except FutureCancelled:  # the loop cancelled it: only a shutdown does
                raise _Stopped from None

    def _fail(self, job: _Job, error: str) -> None:
        try:
            self.store.fail_calibration(job.id, error)
        except (StoreError, sqlite3.Error):
            # Already finished by someone else, or the database is unwritable: at the next
            # start-up `fail_interrupted` catches a job left queued or running.
            log.warning("calibration %s could not be marked failed", job.id, exc_info=True)
        self.metrics.calibrations_failed.labels(job.served.name).inc()
        log.info("calibration %s of model %s failed: %s", job.id, job.served.name, error)

    def _forget(self, job: _Job) -> None:
        shutil.rmtree(job.workdir, ignore_errors=True)
        with self._lock:
            self._jobs.pop(job.id, None)

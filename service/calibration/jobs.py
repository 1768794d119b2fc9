"""Calibration jobs: an uploaded data set in, a stored report (and maybe a new threshold) out.

Each job is an asyncio task on the service's event loop that takes its model's turn (a lock), so a
model's jobs run one at a time, in the order they were started. Decoding, counting and every store
write run in worker threads; each image waits for the inference engine as long as it takes, like
a client that must be served rather than one that would rather hear "busy". The job's record in
the threshold store is the only state a client sees; this module keeps just the tasks and
temporary folders of the jobs it runs. Every temporary folder is removed when its job ends,
whatever the ending, and once more at start-up for what a killed process left behind.

Several processes may share the store. A job belongs to the process that accepted its upload,
which renews the job's lease while it lives; every process fails the jobs whose lease expired
(their process died), and a model's job runs only while no other job of that model runs anywhere.
In this process a model's jobs take turns by a lock; a job whose turn comes while another
process runs one of its model claims the run once per lease round (`keep_leases`, every third
of a lease), woken by that round rather than asking the database in a loop.

A database outage does not end a job: progress is not recorded meanwhile, and the writes the job
needs (starting, reading the reference AUC, storing the result) wait for the database up to
STORE_WAIT_S (service/calibration/writes.py); past that the job fails with the database's error
as its reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from model.calibration import (
    CalibrationError,
    CalibrationReport,
    Criterion,
    MultiClassReport,
    ScoreHistogram,
    build_report,
)
from model.data.datasets import load_pair
from model.errors import DatasetError, ModelOutputError
from model.inference.calibrate import add_to_histogram, new_histogram
from service.calibration.classes import calibrate_classes
from service.calibration.errors import CalibrationsStopping, TooManyCalibrations
from service.calibration.gate import reference_auc
from service.calibration.intake import ClassSpec, Dataset, extract_dataset, relative
from service.calibration.writes import STORE_RETRY_S, Progress, until_stored
from service.inference.engine import InferenceEngine
from service.inference.errors import DeviceOutOfMemory, EngineNotReady
from service.inference.registry import ModelRegistry, ServedModel
from service.ops import tracing
from service.ops.metrics import Metrics
from service.settings import Settings
from service.state.errors import (
    InvalidTransition,
    StoreError,
    StoreFailing,
    StoreUnavailable,
    read_only,
    unavailable,
)
from service.state.records import ActiveThreshold, CalibrationRecord, JobParams
from service.state.store import ThresholdStore

log = logging.getLogger(__name__)

MAX_PENDING = 16  # per model: queued jobs hold extracted data sets on disk
STOP_WAIT_S = 10.0
INTERNAL_ERROR = "internal error; this is a bug in the service and it has been logged"
OUT_OF_MEMORY = "the service ran out of memory; calibrate with smaller images"
SHUTTING_DOWN = "the service is shutting down; start the calibration again once it is back"
STOPPED_QUEUED = "the service stopped before this calibration started; start it again"
STOPPED_RUNNING = "the service stopped while this calibration ran; start it again"
DATABASE_FAILED = (
    "the threshold database failed for longer than this calibration could wait ({why}); "
    "start it again once the database answers"
)
LEASE_EXPIRED = "the process running this calibration stopped; start it again"


@dataclass(frozen=True)
class CalibrationParams:
    """What a client asked for: how to choose the threshold, and whether to activate it."""

    criterion: Criterion
    activate: bool = True
    force: bool = False  # activate even with blocking warnings
    class_criteria: dict[str, Criterion] | None = None  # multi-class: each class's own choice
    recalibrate: str | None = None  # fit this recalibration (temperature, platt, isotonic)


@dataclass
class _Job:
    id: str
    served: ServedModel
    params: CalibrationParams
    workdir: Path
    dataset: Dataset
    record: CalibrationRecord
    task: asyncio.Task[None] | None = None
    running: bool = False  # it has its model's turn: a stop cancels it
    finishing: bool = False  # every image is counted: a stop lets it store its result
    began: float = field(default_factory=time.monotonic)  # admitted: its duration counts from here


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
        # One folder per process: other live processes on this machine keep theirs; a stopped
        # process's folder is removed (its jobs were failed before this runs). A read-only
        # state folder has nothing to clear, and takes no calibrations.
        folders = settings.state_dir / "uploads"
        self.uploads = folders / store.jobs.folder_name
        if store.read_only_because is None:
            folders.mkdir(parents=True, exist_ok=True)
            for folder in folders.iterdir():
                if store.jobs.folder_left_behind(folder.name):
                    shutil.rmtree(folder, ignore_errors=True)
            self.uploads.mkdir(parents=True, exist_ok=True)
        self._jobs: dict[str, _Job] = {}
        self._admissions: dict[asyncio.Future[_Job], str] = {}  # uploads being extracted: model
        self._turns: dict[str, asyncio.Lock] = {}  # per model: its jobs take turns
        self._stopping = threading.Event()  # read by the extracting thread too
        # Set, then replaced, by each lease round: what a job waits for while another process
        # runs a job of its model.
        self._lease_round = asyncio.Event()

    async def start(
        self, served: ServedModel, data: bytes, filename: str | None, params: CalibrationParams
    ) -> CalibrationRecord:
        """Check and extract the zip in `data`, queue a job and return its record as created.

        Raises DatasetRejected for an unusable zip, and CalibrationsStopping or
        TooManyCalibrations when no job can be queued now.
        """
        self._refuse_if_busy(served)
        prepare = asyncio.to_thread(self._prepare, served, data, filename, params)
        admission = asyncio.ensure_future(prepare)
        self._admissions[admission] = served.name
        admission.add_done_callback(self._admitted)
        # Shielded, and launched by the callback: a request cancelled meanwhile still leaves
        # either a queued job that owns the folder or no folder at all.
        job = await asyncio.shield(admission)
        return job.record

    def _refuse_if_busy(self, served: ServedModel) -> None:
        if self.store.read_only_because is not None:
            raise read_only(self.store.read_only_because)
        if self._stopping.is_set():
            raise CalibrationsStopping(SHUTTING_DOWN, retry_after=5)
        pending = sum(name == served.name for name in self._admissions.values())
        pending += sum(job.served.name == served.name for job in self._jobs.values())
        if pending >= MAX_PENDING:
            raise TooManyCalibrations(
                f"model {served.name!r} already has {pending} calibrations queued or running; "
                "wait for one to finish",
                retry_after=10,
            )

    def _prepare(
        self, served: ServedModel, data: bytes, filename: str | None, params: CalibrationParams
    ) -> _Job:
        """In a worker thread: the extracted data set and its queued record, or no folder."""
        spec = ClassSpec(served.mode, served.classes) if served.multi_class else None
        try:
            workdir = Path(tempfile.mkdtemp(prefix="calibration-", dir=self.uploads))
        except OSError as error:
            raise _unavailable_or(error, self.uploads) from error
        try:
            try:
                dataset = extract_dataset(data, workdir / "data", self.settings, spec)
            except OSError as error:  # the uploads folder's disk filled or went read-only
                raise _unavailable_or(error, self.uploads) from error
            if self._stopping.is_set():  # again: extraction took a while
                raise CalibrationsStopping(SHUTTING_DOWN, retry_after=5)
            details = JobParams(
                cost_fp=params.criterion.cost_fp,
                cost_fn=params.criterion.cost_fn,
                dataset=(filename or "")[:255],
                n_images=len(dataset.pairs),
                force=params.force,
            )
            # Only a guaranteed strategy or a recalibration adds keys to the stored params.
            details = details.model_copy(update=_guarantee_params(params))
            record = self.store.jobs.new_calibration(
                served.name,
                served.digest,
                params.criterion.strategy,
                params.criterion.target,
                details,
                params.activate,
            )
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        return _Job(record.id, served, params, workdir, dataset, record)

    def _admitted(self, admission: asyncio.Future[_Job]) -> None:
        """On the loop, whether or not the request still waits: launch the prepared job."""
        del self._admissions[admission]
        if admission.cancelled() or admission.exception() is not None:
            return  # nothing was left behind; the request answers the error
        job = admission.result()
        self._jobs[job.id] = job
        job.task = asyncio.create_task(self._run(job), name=f"calibration-{job.id}")
        self.metrics.calibrations_started.labels(job.served.name).inc()
        log.info(
            "calibration %s of model %s queued: %s, %d images",
            job.id,
            job.served.name,
            job.params.criterion.strategy,
            len(job.dataset.pairs),
        )

    async def stop(self) -> None:
        """Stop every job and wait a little: running ones stop between two steps, queued ones
        fail when their turn comes, at once."""
        self._stopping.set()
        if self._admissions:  # uploads being extracted become jobs, or nothing, first
            await asyncio.wait(list(self._admissions), timeout=STOP_WAIT_S)
        jobs = list(self._jobs.values())
        for job in jobs:
            if job.running and not job.finishing and job.task is not None:
                job.task.cancel()
        tasks = [job.task for job in jobs if job.task is not None]
        if tasks:
            _, left = await asyncio.wait(tasks, timeout=STOP_WAIT_S)
            if left:
                log.warning("%d calibration(s) still running at shutdown", len(left))

    async def keep_leases(self) -> None:
        """Forever, once a round: vouch for this process's jobs, fail those of processes that
        died, and wake the jobs waiting for another process's job of their model."""
        queue = self.store.jobs
        while True:
            try:
                await asyncio.to_thread(queue.renew_leases, list(self._jobs))
                expired = await asyncio.to_thread(queue.fail_expired, LEASE_EXPIRED)
                if expired:
                    log.warning("marked %d calibration(s) of stopped processes failed", expired)
            except StoreUnavailable:
                pass  # the store logged it; the next round tries again
            except StoreError:
                log.warning("could not renew calibration leases", exc_info=True)
            self._lease_round.set()
            self._lease_round = asyncio.Event()
            await asyncio.sleep(queue.renew_every_s)

    async def _claim_run(self, job: _Job) -> None:
        """Mark the job running: at once, or after the lease rounds another process's job of
        its model takes to end (it ends, or its lease runs out and a round fails it)."""
        queue = self.store.jobs
        while not await until_stored(lambda: queue.mark_running(job.id)):
            # A lease at the most: a keeper that stopped early must not leave the job waiting.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lease_round.wait(), timeout=queue.lease_s)

    async def _run(self, job: _Job) -> None:
        """The whole life of one job, traced as one span (its images' passes inside it)."""
        with tracing.span("calibration", **{"unet.model": job.served.name, "unet.job": job.id}):
            await self._live(job)

    async def _live(self, job: _Job) -> None:
        """The whole life of one job, from waiting for its model's turn to its stored ending."""
        name = job.served.name
        try:
            async with self._turns.setdefault(name, asyncio.Lock()):
                if self._stopping.is_set():  # queued when the service began to stop
                    await self._fail(job, STOPPED_QUEUED)
                    return
                job.running = True
                await self._calibrate(job)
        except asyncio.CancelledError:  # only `stop` cancels a job, and only a running one
            await self._fail(job, STOPPED_RUNNING)
        except StoreFailing:
            why = self.store.outage.reason or "no answer"
            log.error("calibration %s of model %s stopped: the database failed", job.id, name)
            await self._fail_when_writable(job, DATABASE_FAILED.format(why=why))
        except StoreUnavailable as error:
            log.error("calibration %s of model %s stopped: %s", job.id, name, error)
            await self._fail_when_writable(job, f"the calibration stopped: {error}")
        except EngineNotReady:  # the engine stopped under the job
            await self._fail(job, STOPPED_RUNNING)
        except (DatasetError, ModelOutputError, CalibrationError) as error:
            # Errors name temporary paths; rewrite them as paths inside the zip.
            await self._fail(job, relative(str(error), job.workdir / "data"))
        except (DeviceOutOfMemory, MemoryError):
            log.exception("calibration %s of model %s ran out of memory", job.id, name)
            await self._fail(job, OUT_OF_MEMORY)
        except Exception:
            log.exception("calibration %s of model %s failed", job.id, name)
            await self._fail(job, INTERNAL_ERROR)
        finally:
            del self._jobs[job.id]
            await _discard(job)  # whatever the ending: nothing of the upload stays

    async def _calibrate(self, job: _Job) -> None:
        """Count every image, then store the report and maybe activate its threshold."""
        name, params = job.served.name, job.params
        await self._claim_run(job)
        started = time.monotonic()
        report: CalibrationReport | MultiClassReport
        if job.served.multi_class:
            progress = Progress(self.store, job.id, len(job.dataset.pairs))
            criteria = params.class_criteria or params.criterion
            report = await calibrate_classes(
                self.engine, job.served, job.dataset.root, criteria, progress
            )
            job.finishing = True
            await _discard(job)
        else:
            hist = await self._count(job)
            job.finishing = True
            # Every image is counted: the data set goes now, before the result is stored, so a
            # client that sees the job finished never finds its upload still on disk.
            await _discard(job)
            reference = await until_stored(lambda: reference_auc(job.served, self.store))
            report = await asyncio.to_thread(
                build_report, hist, params.criterion, reference, params.recalibrate
            )
        # A blocked report is stored but not activated; its record says why (gate.py).
        activate = params.activate and (params.force or not report.blocking)
        active = await until_stored(lambda: self._finish(job, report, activate))
        if active is not None:
            thresholds = report.thresholds if isinstance(report, MultiClassReport) else {"": 0.0}
            for cls, value in thresholds.items():
                self.metrics.set_threshold(name, value if cls else active.value, cls)
            self.metrics.threshold_changed(name, "calibration")
        self._ended(job, "succeeded")
        log.info(
            "calibration %s of model %s succeeded in %.1f s%s",
            job.id,
            name,
            time.monotonic() - started,
            ", now active" if active is not None else "",
        )

    def _finish(
        self, job: _Job, report: CalibrationReport | MultiClassReport, activate: bool
    ) -> ActiveThreshold | None:
        """Store the result; a finish whose commit was reported failed yet landed counts too."""
        try:
            return self.store.jobs.finish_calibration(job.id, report, activate=activate)
        except InvalidTransition:
            record = self.store.get_calibration(job.served.name, job.id)
            threshold = None if isinstance(report, MultiClassReport) else report.threshold
            if record is None or record.status != "succeeded" or record.threshold != threshold:
                raise
            return self.store.current_threshold(job.served.name, job.served.digest)

    async def _count(self, job: _Job) -> ScoreHistogram:
        """The model's scores over every pair of the data set, counted against its masks."""
        served = job.served
        hist = new_histogram(
            served.network, criterion=job.params.criterion, recalibrate=job.params.recalibrate
        )
        progress = Progress(self.store, job.id, len(job.dataset.pairs))
        for done, (image_path, mask_path) in enumerate(job.dataset.pairs, start=1):
            image, mask = await asyncio.to_thread(
                load_pair, image_path, mask_path, served.input, self.settings.max_image_pixels
            )
            # Through the engine, exactly as a client's image goes: same device, precision
            # (autocast), tiling and share of the cores, so the threshold is read off the scores
            # clients get, and the image takes its turn in the queue instead of competing with
            # live traffic for the cores.
            prediction = await self.engine.predict(served, image, wait=True)
            await asyncio.to_thread(
                add_to_histogram,
                hist,
                served.head,
                prediction,
                mask,
                image_path.name,
            )
            await progress(done)
        return hist

    async def _fail_when_writable(self, job: _Job, error: str) -> None:
        """Mark the job failed once the store takes writes again (or the service stops).

        Until then its record reads `running`; a stop leaves it to the next start-up, which marks
        every unfinished job failed. Its data set goes first: on a full disk, that space is what
        lets the failure land.
        """
        await _discard(job)
        while not self._stopping.is_set():
            try:
                await asyncio.to_thread(self.store.jobs.fail_calibration, job.id, error)
            except StoreUnavailable:
                await asyncio.sleep(STORE_RETRY_S)
                continue
            except StoreError:
                log.warning("calibration %s could not be marked failed", job.id, exc_info=True)
            break
        self._ended(job, "failed")
        log.info("calibration %s of model %s failed: %s", job.id, job.served.name, error)

    async def _fail(self, job: _Job, error: str) -> None:
        await _discard(job)  # first, as on success: a finished job leaves nothing on disk
        try:
            await asyncio.to_thread(self.store.jobs.fail_calibration, job.id, error)
        except (StoreError, StoreUnavailable):
            # Already finished by someone else, or the database is unwritable: at the next
            # start-up `fail_interrupted` catches a job left queued or running.
            log.warning("calibration %s could not be marked failed", job.id, exc_info=True)
        self._ended(job, "failed")
        log.info("calibration %s of model %s failed: %s", job.id, job.served.name, error)

    def _ended(self, job: _Job, outcome: str) -> None:
        """Count the job's ending and its duration since admission."""
        self.metrics.calibration_ended(job.served.name, outcome, time.monotonic() - job.began)


def _guarantee_params(params: CalibrationParams) -> dict[str, float | str]:
    """The stored params only a guaranteed strategy or a recalibration adds (none otherwise)."""
    extra: dict[str, float | str] = {}
    if params.criterion.delta is not None:
        extra["delta"] = params.criterion.delta
    if params.recalibrate is not None:
        extra["recalibrate"] = params.recalibrate
    return extra


def _unavailable_or(error: OSError, folder: Path) -> Exception:
    """The StoreUnavailable that `error` means for `folder`, else `error` itself."""
    return unavailable(error, str(folder)) or error


async def _discard(job: _Job) -> None:
    """Remove the job's extracted data set (a no-op once it is gone)."""
    await asyncio.to_thread(shutil.rmtree, job.workdir, ignore_errors=True)

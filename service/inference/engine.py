"""The inference engine: device, precision, dynamic batching and tiling, off the event loop.

Every request becomes a job in its model's bounded queue (`service.inference.batching`); a pool
of worker threads takes batches of same-shaped work from the queues and runs them, with the GIL
released during the pass. A job carries the rest of its request (drift watch and encoding, as
`service.usecases.segment` names them), run in the same worker right after the pass instead of
costing another trip through the event loop. A pass that runs alone, with no queued work to
start beside it, uses every core; models take turns at the workers, and one model holds at most
`UNET_MODEL_MAX_WORKERS` of them (`service.inference.batching`). Images whose padded area
exceeds `UNET_TILE_THRESHOLD_PIXELS` are cut into overlapping tiles (`model.inference.tiling`);
the tiles are the job's units, so they spread over the workers and batch like ordinary images,
and memory stays bounded by the tile whatever the image.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch
from anyio import to_thread

from model.cards.sources.native import NativePredictor
from model.inference.predict import Prediction
from service.inference.backends import (
    ONNXRUNTIME,
    TORCH,
    Backend,
    BackendName,
    CoreShare,
    OrtBackend,
    TorchBackend,
    onnx_backend,
)
from service.inference.batching import (
    Batcher,
    Job,
    QueueFull,
    Stopped,
    Unit,
    WorkerPool,
)
from service.inference.errors import DeviceOutOfMemory, EngineBusy, EngineNotReady, EngineTimeout
from service.inference.plan import plan_engine
from service.inference.registry import ModelRegistry, ServedModel
from service.inference.units import (
    Finish,
    ImageJob,
    TiledJob,
    crop,
    finish,
    make_job,
    needs_tiles,
    whole_predictions,
)
from service.ops.metrics import Metrics
from service.settings import Settings

log = logging.getLogger(__name__)

WARMUP_SIDE = 256  # a typical request; tiles warm the tile-sized path separately
T = TypeVar("T")


def _unchanged(prediction: Prediction) -> Prediction:
    return prediction


def _said(error: BaseException) -> str:
    """An exception as one short line: its message, else its type."""
    text = " ".join(str(error).split())[:300]
    return text or type(error).__name__


class InferenceEngine:
    """Turns decoded images into model outputs without blocking the event loop."""

    def __init__(self, registry: ModelRegistry, settings: Settings, metrics: Metrics) -> None:
        self.registry = registry
        self.settings = settings
        self.metrics = metrics
        self.ready = False
        device = next(iter(registry)).device
        self.plan = plan_engine(settings, device, models=len(registry.names()))
        self._batchers: dict[str, Batcher] = {}
        self._backends: dict[str, Backend] = {}
        self._pool: WorkerPool | None = None
        self._previous_threads = torch.get_num_threads()
        share = self.plan.share_cores
        self._cores = CoreShare(share, self._crowded) if share else None
        # Per model, so that one model's large images never hold back another's.
        self._large: dict[str, asyncio.Semaphore] = {}
        self._started = asyncio.Event()  # set once the batchers take work
        self._settled = asyncio.Event()  # set once start() has finished, or the engine stopped

    async def start(self) -> None:
        """Start the workers, then warm every model up so that the first request is not slow."""
        plan = self.plan
        log.info("inference engine on %s: %s", plan.device, plan)
        if plan.torch_threads is not None:
            # Process-wide: worker threads pick it up when they first run a parallel region.
            torch.set_num_threads(plan.torch_threads)
        self._pool = WorkerPool(plan.limits.workers)
        self._pool.start()
        for served in self.registry:
            try:
                if plan.channels_last:
                    served.network.channels_last()
                # In a worker thread: an export takes seconds, and the loop must keep answering.
                backend = await to_thread.run_sync(self._choose_backend, served)
            except Exception as error:  # one model's failure leaves the others serving
                self._set_aside(served, f"could not be set up: {_said(error)}")
                continue
            self._backends[served.name] = backend
            batcher = Batcher(
                served.name,
                plan.limits,
                functools.partial(self._execute, served),
                self._pool,
                self.metrics,
            )
            self._batchers[served.name] = batcher
        self._started.set()
        bound = self.settings.model_load_timeout_s
        for served in self.registry:
            try:
                async with asyncio.timeout(bound):
                    await self._warm_up(served)
            except TimeoutError:
                await self._quarantine(
                    served, f"warm-up took longer than {bound:g} s (UNET_MODEL_LOAD_TIMEOUT_S)"
                )
            except Exception as error:  # NaN output, a library error: that model only
                await self._quarantine(served, f"warm-up failed: {_said(error)}")
        # Ready once every loadable model is warm; with none left there is nothing to serve.
        self.ready = bool(self.registry.names())
        self._settled.set()
        log.info("inference engine ready" if self.ready else "no model survived warm-up")

    async def wait_ready(self) -> bool:
        """Wait until the warm-up has finished (or the engine stopped); whether it is ready."""
        await self._settled.wait()
        return self.ready

    def _set_aside(self, served: ServedModel, why: str) -> None:
        """Mark `served` unavailable with a one-line reason naming its card."""
        self.registry.mark_unavailable(served.name, f"{served.path}: {why}")

    async def _quarantine(self, served: ServedModel, why: str) -> None:
        """Take a model that failed warm-up out of service; its queue is dropped."""
        self._set_aside(served, why)
        self._backends.pop(served.name, None)
        batcher = self._batchers.pop(served.name, None)
        if batcher is not None:
            await batcher.stop()

    async def stop(self) -> None:
        """Stop accepting work, fail what is queued and let running passes finish."""
        self.ready = False
        self._settled.set()  # whoever waits for the warm-up learns it will not come
        batchers, self._batchers = self._batchers, {}
        for batcher in batchers.values():
            await batcher.stop()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await to_thread.run_sync(pool.stop)  # running passes finish first
        if self.plan.torch_threads is not None:
            torch.set_num_threads(self._previous_threads)

    async def predict(
        self, served: ServedModel, image: np.ndarray, *, wait: bool = False
    ) -> Prediction:
        """The foreground output and logits of `served` for one (C, H, W) normalised image.

        Normalised as the model's card `input` says (`model.data.normalize`): in [0, 1] under
        `dtype` and `minmax`, not confined to it under `percentile` (unclipped), `zscore` or
        `fixed`.

        A request is refused at once when the queue is full and dropped past its deadline
        (EngineBusy, EngineTimeout). With `wait`, the image waits for room in the queue and for
        its answer as long as it takes, as work that must be done rather than answered quickly
        (calibration images) does; cancel the caller to give up.
        """
        if not wait:
            return await self.run(served, image, _unchanged)
        await self._started.wait()  # a job may start before the engine does
        result: Prediction = await self._run(
            served, image, _unchanged, None, wait=True, kind="background"
        )
        return result

    async def run(self, served: ServedModel, image: np.ndarray, then: Callable[[Any], T]) -> T:
        """`then(prediction)` for one (C, H, W) image, in the inference worker (multi-class
        models: a ClassPrediction, every class's map)."""
        timeout = self.settings.request_timeout_s
        if not self._started.is_set():
            # Start-up (choosing a backend, maybe an export) takes seconds; a request that comes
            # meanwhile waits for it, as it waits behind the warm-up, within its deadline.
            began = asyncio.get_running_loop().time()
            try:
                async with asyncio.timeout(timeout):
                    await self._started.wait()
            except TimeoutError:
                raise EngineNotReady(
                    "the inference engine is still starting; retry shortly"
                ) from None
            timeout -= asyncio.get_running_loop().time() - began
        result: T = await self._run(served, image, then, timeout)
        return result

    async def _run(
        self,
        served: ServedModel,
        image: np.ndarray,
        then: Finish,
        timeout: float | None,
        wait: bool = False,
        kind: str = "request",
    ) -> Any:
        """Queue one image and wait for its result, at most `timeout` seconds.

        Raises the errors of `service.inference.errors`; `wait` waits for room in the queue;
        `kind` is the job's (`batching.Job`): what its times count towards.
        """
        batcher = self._batchers.get(served.name)
        if batcher is None:
            raise EngineNotReady("the inference engine is starting or stopping; retry shortly")
        _, height, width = image.shape
        # A large image holds a few full-size planes while its tiles run; a few at a time are
        # enough to keep every worker busy, so the rest wait here instead of holding memory.
        large = needs_tiles(served, height, width, self.settings)
        admission = self._admission(served.name) if large else contextlib.nullcontext()
        job: Job | None = None
        try:
            async with asyncio.timeout(timeout), admission:
                if wait:  # for room before a large job's planes are allocated, then again
                    await batcher.wait_for_room()
                    job = await make_job(served, image, self.settings, then)
                    job.kind = kind
                    await batcher.submit_waiting(job)
                else:
                    batcher.check_room()
                    job = await make_job(served, image, self.settings, then)
                    job.kind = kind
                    batcher.submit(job)
                return await job.future
        except QueueFull as full:
            raise EngineBusy(served.name, batcher.limits.queue_size, full.retry_after) from None
        except TimeoutError:
            if job is not None:
                batcher.cancel(job)
            raise EngineTimeout(served.name, timeout, batcher.retry_after()) from None
        except asyncio.CancelledError:
            if job is not None:
                batcher.cancel(job)  # the client went away: its work is not worth doing
            raise
        except Stopped:
            raise EngineNotReady(
                "the inference engine stopped before answering; retry shortly"
            ) from None
        except torch.OutOfMemoryError:
            raise DeviceOutOfMemory(served.name) from None

    def backend(self, name: str) -> BackendName | None:
        """What runs model `name`'s passes (`torch`, `onnxruntime`); None until chosen."""
        backend = self._backends.get(name)
        return backend.name if backend else None

    def _choose_backend(self, served: ServedModel) -> Backend:
        """ONNX Runtime on CPU where the settings allow it and the model exports, else torch.

        A model that cannot run on ONNX Runtime still serves, on torch, with one log line
        saying why.
        """
        plan, wanted = self.plan, self.settings.backend
        shared = self._cores.share if self._cores else None
        torch_backend = TorchBackend(
            served.network,
            plan.device,
            channels_last=plan.channels_last,
            autocast=plan.autocast,
            share=shared,
        )
        # Only a native checkpoint is exported; other sources run as their card says (an ONNX
        # card already runs on ONNX Runtime through its own predictor).
        native = served.network.network if isinstance(served.network, NativePredictor) else None
        if native is None:
            log.info("model %s: runs on its %s source", served.name, served.card.source.format)
            return torch_backend
        if served.quantized is not None:  # chosen with the digest, before the store opened
            log.info("model %s: backend onnxruntime, precision int8", served.name)
            threads, workers = plan.torch_threads or 1, plan.limits.workers
            return OrtBackend(served.quantized, native, threads, self._cores, workers)
        if wanted == TORCH or plan.device.type != "cpu":
            if wanted == ONNXRUNTIME:
                log.warning(
                    "model %s: UNET_BACKEND=onnxruntime is CPU only; torch on %s",
                    served.name,
                    plan.device,
                )
            log.info("model %s: backend torch on %s, precision fp32", served.name, plan.device)
            return torch_backend
        try:
            ort_backend, exported = onnx_backend(
                native,
                served.digest,
                self.settings.state_dir / "onnx",
                threads=plan.torch_threads or 1,
                share=self._cores,
                workers=plan.limits.workers,
            )
        except Exception as error:  # whatever stops ONNX Runtime, torch still serves
            log.warning(
                "model %s: backend torch, not onnxruntime: %s: %s",
                served.name,
                type(error).__name__,
                error,
            )
            return torch_backend
        log.info(
            "model %s: backend onnxruntime (%s %s), precision fp32",
            served.name,
            "exported to" if exported else "cached at",
            self.settings.state_dir / "onnx" / f"{served.digest}.onnx",
        )
        return ort_backend

    def _crowded(self) -> bool:
        """Whether work waits that will run beside a pass starting now (`WorkerPool.crowded`).

        A model capped at one worker, holding it, with work queued is not crowded by that work:
        the cores its cap leaves idle are its lone pass's.
        """
        return self._pool is not None and self._pool.crowded()

    def _admission(self, name: str) -> asyncio.Semaphore:
        """The semaphore that lets a model's large images in as many at a time as it has workers."""
        if name not in self._large:
            self._large[name] = asyncio.Semaphore(self.plan.limits.per_model)
        return self._large[name]

    def queue_depth(self, name: str) -> int:
        """Jobs waiting for model `name`."""
        batcher = self._batchers.get(name)
        return batcher.depth if batcher else 0

    async def _warm_up(self, served: ServedModel) -> None:
        """Representative passes: a full batch of typical images, then one tile."""
        limits = self.plan.limits
        side = served.card.tiling.size or self.settings.tile_size  # the tile it will run
        count = max(limits.max_batch, limits.workers)
        typical = np.zeros((served.in_channels, WARMUP_SIDE, WARMUP_SIDE), dtype=np.float32)
        tile = np.zeros((served.in_channels, side, side), dtype=np.float32)
        # No deadline: a slow first pass (allocations, kernel selection) is what warm-up is for;
        # and waiting for room, since a small UNET_QUEUE_SIZE may not hold the whole batch.
        warm = functools.partial(self._run, then=_unchanged, timeout=None, wait=True, kind="warmup")
        await asyncio.gather(*(warm(served, typical) for _ in range(count)))
        await warm(served, tile)

    @torch.inference_mode()
    def _execute(self, served: ServedModel, units: list[Unit]) -> list[tuple[Job, Any]]:
        """Run one batch in a worker thread; returns the jobs it finished with their results."""
        live = [(job, index) for job, index in units if not job.cancelled]
        if not live:
            return []
        crops = np.stack([crop(job, index) for job, index in live])
        started = time.perf_counter()
        logits = self._forward(served, crops)
        whole = [row for row, (job, _) in enumerate(live) if isinstance(job, ImageJob)]
        tiles = [row for row, (job, _) in enumerate(live) if isinstance(job, TiledJob)]
        # Indexing copies; the common batch is all whole images or all tiles.
        ours = logits if len(whole) == len(live) else logits[whole]
        predictions = whole_predictions(served, ours) if whole else []
        ours = logits if len(tiles) == len(live) else logits[tiles]
        tile_logits = ours.cpu().numpy() if tiles else None
        if any(job.kind != "warmup" for job, _ in live):  # warm-up passes are not traffic
            self.metrics.inference.labels(served.name).observe(time.perf_counter() - started)
        finished: list[tuple[Job, Any]] = [
            (live[row][0], prediction) for row, prediction in zip(whole, predictions, strict=True)
        ]
        for position, row in enumerate(tiles):
            job, index = live[row]
            assert isinstance(job, TiledJob) and tile_logits is not None
            done = job.add(index, tile_logits[position])
            if done is not None:
                finished.append((job, done))
        if len(finished) > len(whole):  # a large image's last tile: its passes' memory goes back
            self._backends[served.name].release()
        return [(job, finish(job, prediction)) for job, prediction in finished]

    def _forward(self, served: ServedModel, crops: np.ndarray) -> torch.Tensor:
        """Float32 logits (N, K, H, W) on the device for a batch of inputs (N, C, H, W)."""
        return self._backends[served.name].logits(crops)

"""What runs a served model's network: torch, or ONNX Runtime on CPU.

Both give the same thing, float32 logits (N, K, H, W) on the device for a batch of inputs
(N, C, H, W); the head, tiling, thresholding and encoding stay the engine's, so serving and
calibration read the same scores whichever backend runs. ONNX Runtime ran the shipped models
about 25% faster than torch on a small CPU (docs/benchmarks.md, "ONNX Runtime"); torch stays for
GPUs, for training and wherever a model does not export.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch

from model.cards.sources import Predictor
from model.cards.sources.onnx import ort_session
from model.cards.to_onnx import INPUT_NAME, OUTPUT_NAME, cached_export
from model.network.unet import UNet

log = logging.getLogger(__name__)

BackendName = Literal["torch", "onnxruntime"]
TORCH: BackendName = "torch"
ONNXRUNTIME: BackendName = "onnxruntime"
CHECK_SHAPE = (2, 45, 37)  # batch, height, width: odd sides, so the check covers the padding
CHECK_TOLERANCE = 1e-4  # on the head's output, where thresholds are read


class Backend(Protocol):
    """Runs one network's forward passes."""

    name: BackendName

    def logits(self, batch: np.ndarray) -> torch.Tensor:
        """Float32 logits (N, K, H, W) on the device for inputs (N, C, H, W)."""
        ...

    def release(self) -> None:
        """Give back the memory kept for passes' sake that no pass holds now."""
        ...


class TorchBackend:
    """The network's own torch module, on its device."""

    name: BackendName = TORCH

    def __init__(
        self,
        network: Predictor,
        device: torch.device,
        *,
        channels_last: bool,
        autocast: torch.dtype | None,
        share: Callable[[], AbstractContextManager[None]] | None,
    ) -> None:
        self.network = network
        self.device = device
        self.channels_last = channels_last
        self.autocast = autocast
        self.share = share  # per-pass torch thread counts on CPU (engine.CoreShare)

    def logits(self, batch: np.ndarray) -> torch.Tensor:
        """Float32 logits (N, K, H, W) on the device for inputs (N, C, H, W)."""
        inputs = torch.from_numpy(batch).to(self.device, non_blocking=True)
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        autocast = (
            torch.autocast(self.device.type, dtype=self.autocast)
            if self.autocast is not None
            else contextlib.nullcontext()
        )
        shared = self.share() if self.share else contextlib.nullcontext()
        with autocast, shared:
            logits = self.network.logits(inputs)
        return logits.float()

    def release(self) -> None:
        """Nothing to give back: torch's CPU allocator frees what a pass is done with."""


class CoreShare:
    """The one core-sharing rule: a pass running alone takes every core, concurrent passes
    share them (`cores // passes running`), and a pass keeps to one core while `crowded()`
    says other work waits, since another pass will start at once beside it.

    One per engine, whatever the backend: torch passes set their thread count from it
    (`share`), ONNX Runtime passes pick the wide or the narrow session (`OrtBackend`).
    """

    def __init__(self, cores: int, crowded: Callable[[], bool] = lambda: False) -> None:
        self.cores = cores
        self.crowded = crowded
        self._running = 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def passing(self) -> Iterator[int]:
        """One pass: yields how many threads it may use."""
        with self._lock:
            self._running += 1
            threads = 1 if self.crowded() else max(1, self.cores // self._running)
        try:
            yield threads
        finally:
            with self._lock:
                self._running -= 1

    @contextlib.contextmanager
    def share(self) -> Iterator[None]:
        """Run one torch pass with this thread's share of the cores.

        torch's thread count is a per-thread OpenMP setting (the process-wide value only seeds
        new threads), so each worker sets its own before a pass.
        """
        with self.passing() as threads:
            # Ask torch rather than remember: a thread's first parallel op resets its count to
            # the last value set by any thread, which left one worker single-threaded for good
            # (its lone passes took 50 ms instead of 32). Asking runs that first-op reset now.
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
            yield


class OrtBackend:
    """ONNX Runtime sessions of the exported network, sized to the cores.

    One session per worker with `threads` intra-op threads each, as torch runs one pass per
    core under load (one session shared by the workers measured slower); and, with a `share`
    of more cores than that, a wide session with every core for the pass that `share` says
    runs alone. All of them keep their memory in one arena (`ort_session`). The padding to the
    network's grid and the crop back happen here, around the exported graph
    (`model.cards.to_onnx`).
    """

    name: BackendName = ONNXRUNTIME

    def __init__(
        self,
        path: Path,
        network: UNet,
        threads: int,
        share: CoreShare | None = None,
        workers: int = 1,
    ) -> None:
        self.network = network  # for its padding rule; the pass itself is ONNX Runtime's
        self._narrow: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for _ in range(workers):
            self._narrow.put(ort_session(path, threads))
        self._share = share if share is not None and share.cores > threads else None
        self._wide = ort_session(path, self._share.cores) if self._share else None

    def logits(self, batch: np.ndarray) -> torch.Tensor:
        """Float32 logits (N, K, H, W) on the CPU for inputs (N, C, H, W)."""
        height, width = batch.shape[-2:]
        padded, (top, left) = self.network.pad_to_grid(torch.from_numpy(batch))
        with self._session() as session:
            (logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: padded.numpy()})
        return torch.from_numpy(logits)[..., top : top + height, left : left + width]

    def release(self) -> None:
        """Shrink the shared arena to what passes hold now.

        The arena keeps the largest pass's memory for the next one: after a large image's
        tiles, about 200 MB that its post-processing (the object split, the encoders) then
        allocated beside. ONNX Runtime shrinks arenas only at the end of a run that asks, so
        this runs a pass over one grid cell that asks.
        """
        import onnxruntime as ort

        options = ort.RunOptions()
        options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        multiple = self.network.multiple
        cell = np.zeros((1, self.network.config.in_channels, multiple, multiple), np.float32)
        session = self._narrow.get()
        try:
            session.run([OUTPUT_NAME], {INPUT_NAME: cell}, options)
        finally:
            self._narrow.put(session)

    @contextlib.contextmanager
    def _session(self) -> Iterator[Any]:
        """The session for one pass: the wide one when the pass may take every core."""
        with self._share.passing() if self._share else contextlib.nullcontext(1) as threads:
            if self._wide is not None and self._share and threads >= self._share.cores:
                yield self._wide
                return
            session = self._narrow.get()
            try:
                yield session
            finally:
                self._narrow.put(session)


def onnx_backend(
    network: UNet,
    digest: str,
    folder: Path,
    threads: int,
    share: CoreShare | None = None,
    workers: int = 1,
) -> tuple[OrtBackend, bool]:
    """An OrtBackend of `network` checked against torch: (backend, whether it was exported now).

    Raises whatever stops it: onnxruntime missing, an export that fails, a file ONNX Runtime
    rejects, or outputs further than CHECK_TOLERANCE from torch's.
    """
    path, fresh = cached_export(network, digest, folder)
    try:
        backend = OrtBackend(path, network, threads, share, workers)
    except ImportError:
        raise
    except Exception:
        if fresh:
            raise
        # A cached file that no longer loads (truncated, older runtime): export it once more.
        path.unlink(missing_ok=True)
        path, fresh = cached_export(network, digest, folder)
        backend = OrtBackend(path, network, threads, share, workers)
    check(network, backend)
    return backend, fresh


@torch.inference_mode()
def check(network: UNet, backend: Backend) -> None:
    """Raise ValueError if `backend`'s head output differs from torch's by more than the bar."""
    batch, height, width = CHECK_SHAPE
    generator = torch.Generator().manual_seed(0)
    inputs = torch.rand(batch, network.config.in_channels, height, width, generator=generator)
    expected = network.head(network.logits(inputs.to(next(network.parameters()).device)))
    got = network.head(backend.logits(inputs.numpy()))
    gap = float((got - expected.cpu().float()).abs().max())
    if not gap <= CHECK_TOLERANCE:  # also catches NaN
        raise ValueError(
            f"its output differs from torch's by {gap:.2g} (more than {CHECK_TOLERANCE:g})"
        )

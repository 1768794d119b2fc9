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


class OrtBackend:
    """ONNX Runtime sessions of the exported network, sized to the cores.

    One session per worker with `threads` intra-op threads each, as torch runs one pass per
    core under load; and, when `wide` > 0, a session with `wide` threads for a pass that runs
    alone while `crowded()` says no other work waits, so that a lone request uses every core.
    The padding to the network's grid and the crop back happen here, around the exported graph
    (`model.cards.to_onnx`).
    """

    name: BackendName = ONNXRUNTIME

    def __init__(
        self,
        path: Path,
        network: UNet,
        workers: int,
        threads: int,
        wide: int,
        crowded: Callable[[], bool] = lambda: False,
    ) -> None:
        self.network = network  # for its padding rule; the pass itself is ONNX Runtime's
        self._narrow: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for _ in range(workers):
            self._narrow.put(ort_session(path, threads))
        self._wide = ort_session(path, wide) if wide > threads else None
        self._wide_free = self._wide is not None
        self._crowded = crowded
        self._running = 0
        self._lock = threading.Lock()

    def logits(self, batch: np.ndarray) -> torch.Tensor:
        """Float32 logits (N, K, H, W) on the CPU for inputs (N, C, H, W)."""
        height, width = batch.shape[-2:]
        padded, (top, left) = self.network.pad_to_grid(torch.from_numpy(batch))
        with self._session() as session:
            (logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: padded.numpy()})
        return torch.from_numpy(logits)[..., top : top + height, left : left + width]

    @contextlib.contextmanager
    def _session(self) -> Iterator[Any]:
        """A session for one pass: the wide one when no other pass runs, else a narrow one."""
        with self._lock:
            self._running += 1
            # Under load a wide pass would share its cores with the next narrow one.
            wide = self._wide_free and self._running == 1 and not self._crowded()
            if wide:
                self._wide_free = False
        session = self._wide if wide else self._narrow.get()
        try:
            yield session
        finally:
            with self._lock:
                self._running -= 1
                if wide:
                    self._wide_free = True
            if not wide:
                self._narrow.put(session)


def ort_session(path: Path, threads: int) -> Any:
    """An ONNX Runtime CPU session of the model at `path` with `threads` intra-op threads."""
    import onnxruntime as ort  # optional at import time: auto falls back to torch without it

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Threads that spin after a pass would steal the core a parallel pass is using.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only; warnings about unused initialisers are noise
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_backend(
    network: UNet,
    digest: str,
    folder: Path,
    workers: int,
    threads: int,
    wide: int,
    crowded: Callable[[], bool] = lambda: False,
) -> tuple[OrtBackend, bool]:
    """An OrtBackend of `network` checked against torch: (backend, whether it was exported now).

    Raises whatever stops it: onnxruntime missing, an export that fails, a file ONNX Runtime
    rejects, or outputs further than CHECK_TOLERANCE from torch's.
    """
    path, fresh = cached_export(network, digest, folder)
    try:
        backend = OrtBackend(path, network, workers, threads, wide, crowded)
    except ImportError:
        raise
    except Exception:
        if fresh:
            raise
        # A cached file that no longer loads (truncated, older runtime): export it once more.
        path.unlink(missing_ok=True)
        path, fresh = cached_export(network, digest, folder)
        backend = OrtBackend(path, network, workers, threads, wide, crowded)
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

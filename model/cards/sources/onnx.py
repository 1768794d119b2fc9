"""ONNX networks run with onnxruntime (extra `[onnx]`): smp and other exports land here.

`ort_session` is the one place an ONNX Runtime session is made, for imported ONNX cards and for
the service's ONNX backend (native checkpoints exported by `model.cards.to_onnx`) alike.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.cards.card import ModelCard
from model.cards.sources.base import Predictor
from model.cards.sources.extras import require
from model.errors import CardError

CPU = "CPUExecutionProvider"


def ort_session(
    path: Path,
    threads: int | None = None,
    *,
    providers: Sequence[str] = (CPU,),
    log_level: int = 3,
) -> Any:
    """An ONNX Runtime session of the model at `path` with `threads` intra-op threads (None:
    ONNX Runtime's own choice), its CPU memory in the one arena all sessions share.

    Raises ImportError without onnxruntime, and onnxruntime's own errors for a file it rejects.
    """
    import onnxruntime as ort  # optional at import time: callers fall back or explain

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Threads that spin after a pass would steal the core a parallel pass is using.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # Every session's own arena kept its largest pass's memory for good: with one session per
    # worker plus a wide one, per model, that was most of the service's resident memory. One
    # arena shared by every session holds only what runs at once (docs/benchmarks.md, "ONNX
    # Runtime memory").
    _shared_cpu_arena()
    options.add_session_config_entry("session.use_env_allocators", "1")
    options.log_severity_level = log_level
    return ort.InferenceSession(str(path), options, providers=list(providers))


@functools.cache
def _shared_cpu_arena() -> None:
    """Register, once per process, the CPU arena that sessions asking for env allocators use."""
    import onnxruntime as ort

    info = ort.OrtMemoryInfo(
        "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
    )
    ort.create_and_register_allocator(info, None)


class OnnxPredictor(Predictor):
    """An onnxruntime session on the CPU; tensors cross as float32 numpy arrays."""

    def __init__(self, card: ModelCard, card_path: Path, device: torch.device) -> None:
        super().__init__(card, card_path, torch.device("cpu"))
        ort = require("onnxruntime", "onnx", card_path, "onnx")
        path = card.source_path(card_path)
        providers = [CPU]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            # Failures surface as this package's one-line errors; onnxruntime's own log would
            # print a second, lower-level account of the same failure on stderr.
            self.session = ort_session(path, providers=providers, log_level=4)
        except Exception as error:  # onnxruntime raises its own types for files it cannot read
            raise CardError(
                f"{card_path}: {path.name} is not a loadable ONNX model ({str(error)[:200]}); "
                "export it with torch.onnx.export"
            ) from None
        self.input_name = self.session.get_inputs()[0].name

    def run_padded(self, batch: torch.Tensor) -> torch.Tensor:
        """One session run; the session is thread-safe, so workers may share it."""
        array = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        (out, *_) = self.session.run(None, {self.input_name: array})
        out = np.asarray(out)
        if out.dtype.kind != "f":  # integers or booleans are not scores: the probe refuses them
            return torch.from_numpy(out)
        return torch.from_numpy(out.astype(np.float32, copy=False))

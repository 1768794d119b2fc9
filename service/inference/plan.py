"""How the engine runs on its device: batch limits, workers and threads, resolved once.

The defaults come from measurement (docs/benchmarks.md, "Serving"): on a small CPU one
single-threaded pass per core beats intra-op parallelism and big batches under load; a GPU is fed
best by big batches.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from service.inference.batching import BatchLimits, model_worker_cap
from service.settings import Settings

log = logging.getLogger(__name__)

AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class EnginePlan:
    """How the engine runs on its device, resolved once from the settings."""

    device: torch.device
    limits: BatchLimits
    torch_threads: int | None  # threads per pass under load; None: leave torch's own choice
    share_cores: int  # > 0: a pass running alone may use this many threads (CPU only)
    autocast: torch.dtype | None
    channels_last: bool
    # CPU cores this worker process may use: what a request's post-processing (the object
    # split's bands) may spread over once its pass is done.
    host_cores: int = 1


def usable_cores() -> int:
    """CPU cores this process may use: its affinity mask, capped by a cgroup v2 CPU quota."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    try:  # a container limited with --cpus sees every core of the host but may use fewer
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def plan_engine(settings: Settings, device: torch.device, models: int = 1) -> EnginePlan:
    """Per-device defaults for whatever the settings leave unset (see docs/benchmarks.md).

    `models` is how many models share the workers (it sets the per-model worker cap).
    """
    # Worker processes on one machine split its cores between them.
    cores = max(1, usable_cores() // settings.workers)
    if device.type == "cuda":
        # A GPU is fed best by big batches; two workers overlap host copies with compute.
        limits = BatchLimits(
            max_batch=settings.max_batch or 32,
            wait_s=(2.0 if settings.batch_wait_ms is None else settings.batch_wait_ms) / 1000,
            workers=2,
            queue_size=settings.queue_size,
            model_workers=model_worker_cap(settings.model_max_workers, 2, models),
        )
        autocast = AUTOCAST.get(settings.autocast)
        return EnginePlan(
            device,
            limits,
            settings.torch_threads,
            0,
            autocast,
            channels_last=True,
            host_cores=cores,
        )
    # On a small CPU, one single-threaded pass per core beats intra-op parallelism and big
    # batches under load; a pass that runs alone uses every core, for latency at low load
    # (measured: docs/benchmarks.md, "Serving").
    threads = settings.torch_threads or 1
    workers = max(1, cores // threads)
    limits = BatchLimits(
        max_batch=settings.max_batch or 1,
        wait_s=(settings.batch_wait_ms or 0.0) / 1000,
        workers=workers,
        queue_size=settings.queue_size,
        model_workers=model_worker_cap(settings.model_max_workers, workers, models),
    )
    if settings.autocast != "off":
        log.warning("UNET_AUTOCAST=%s applies on CUDA only; running float32", settings.autocast)
    share = cores if settings.torch_threads is None and limits.workers > 1 else 0
    return EnginePlan(device, limits, threads, share, None, channels_last=True, host_cores=cores)

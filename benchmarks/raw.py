"""In-process throughput of a model on each backend: the ceilings the service is held to.

The best of a few ways of running it (one forward pass at a time with every core, one
single-threaded pass per core in parallel, batches), and the single-image model time; on CPU
the same for ONNX Runtime on the graph the service exports, and as the service runs it.
"""

from __future__ import annotations

import functools
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.launch import log
from model import UNet
from model.cards.sources.onnx import ort_session
from model.cards.to_onnx import INPUT_NAME
from service.inference.backends import CoreShare, OrtBackend
from service.inference.plan import usable_cores


def _timed_runs(run: Callable[[], int], images: int, seconds: float) -> float:
    """Images per second of `run` (which returns how many images it did), bounded in time."""
    run()  # warm-up
    done, started = 0, time.perf_counter()
    while done < images and time.perf_counter() - started < seconds:
        done += run()
    return done / (time.perf_counter() - started)


def _parallel_rate(
    forward: Callable[[int], int],
    workers: int,
    threads: int,
    batch: int,
    images: int,
    seconds: float,
) -> float:
    """Images per second of `workers` threads each running passes of `batch` back to back.

    Each thread loops on its own (no barrier between rounds, so none waits for a slower one)
    with its own torch thread count, which is a per-thread OpenMP setting.
    """
    done = [0] * workers
    began: list[float] = []
    start = threading.Barrier(workers + 1, action=lambda: began.append(time.perf_counter()))

    def work(index: int) -> None:
        torch.set_num_threads(threads)
        forward(batch)  # warm-up
        start.wait()
        while done[index] * workers < images and time.perf_counter() < began[0] + seconds:
            done[index] += forward(batch)

    pool = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    for thread in pool:
        thread.start()
    start.wait()
    for thread in pool:
        thread.join()
    return sum(done) / (time.perf_counter() - began[0])


def raw_throughput(
    network: UNet, device: torch.device, side: int, images: int, seconds: float
) -> dict[str, Any]:
    """The model in-process, several ways; the best images/s is the ceiling for the service."""
    network = network.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    cores = usable_cores()
    previous = torch.get_num_threads()

    @torch.inference_mode()
    def forward(batch: int) -> int:
        x = torch.rand(batch, network.config.in_channels, side, side, device=device)
        network.logits(x.contiguous(memory_format=torch.channels_last))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return batch

    configs: list[dict[str, Any]] = []
    try:
        if device.type == "cuda":
            for batch in (1, 8, 32):
                rate = _timed_runs(functools.partial(forward, batch), images, seconds)
                configs.append({"way": f"sequential, batch {batch}", "images_per_s": rate})
        else:
            for threads, workers, batch in (
                (cores, 1, 1),
                (1, cores, 1),
                (cores, 1, 4),
                (1, cores, 4),
            ):
                rate = _parallel_rate(forward, workers, threads, batch, images, seconds)
                way = f"{workers} parallel x {threads} torch thread(s), batch {batch}"
                configs.append({"way": way, "images_per_s": rate})
                log(f"raw: {way}: {rate:.2f} images/s")
        # Single-image model time: one thread, then every core; the faster is the strict bar.
        single = {}
        for threads in sorted({1, cores}) if device.type == "cpu" else [previous]:
            torch.set_num_threads(threads)
            rate = _timed_runs(functools.partial(forward, 1), min(images, 20), seconds)
            single[threads] = 1000 / rate
            log(f"raw: one image, {threads} torch thread(s): {single[threads]:.1f} ms")
    finally:
        torch.set_num_threads(previous)
    return {
        "ways": configs,
        "ceiling_images_per_s": max(c["images_per_s"] for c in configs),
        "model_ms_single_image": min(single.values()),
        "model_ms_single_image_by_threads": single,
    }


def raw_onnxruntime(
    network: UNet, onnx_path: Path, side: int, images: int, seconds: float
) -> dict[str, Any]:
    """The exported graph on ONNX Runtime in-process, the same ways as torch, and as served."""
    cores = usable_cores()
    inputs = np.random.default_rng(0).random(
        (4, network.config.in_channels, side, side), dtype=np.float32
    )

    def pooled(sessions: list[Any]) -> Callable[[int], int]:
        free: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for session in sessions:
            free.put(session)

        def forward(batch: int) -> int:
            session = free.get()  # as many sessions as threads: each thread keeps its own
            try:
                session.run(None, {INPUT_NAME: inputs[:batch]})
            finally:
                free.put(session)
            return batch

        return forward

    def measured(way: str, forward: Callable[[int], int], workers: int, batch: int) -> None:
        """Images/s of `forward` run by `workers` threads, and the CPU time per image."""
        done, lock = [0], threading.Lock()

        def counted(size: int) -> int:
            forward(size)
            with lock:  # `+=` on shared state from several threads would lose counts
                done[0] += size
            return size

        cpu = time.process_time()
        rate = _parallel_rate(counted, workers, 1, batch, images, seconds)
        cpu_ms = 1000 * (time.process_time() - cpu) / done[0]
        configs.append({"way": way, "images_per_s": rate, "cpu_ms_per_image": cpu_ms})
        log(f"raw onnxruntime: {way}: {rate:.2f} images/s, {cpu_ms:.1f} ms CPU per image")

    configs: list[dict[str, Any]] = []
    for threads, workers, batch in ((cores, 1, 1), (1, cores, 1), (cores, 1, 4), (1, cores, 4)):
        forward = pooled([ort_session(onnx_path, threads) for _ in range(workers)])
        way = f"{workers} session(s) x {threads} thread(s) in parallel, batch {batch}"
        measured(way, forward, workers, batch)
    # As the service runs it under load (work always waiting): a narrow session per worker.
    served = OrtBackend(onnx_path, network, 1, CoreShare(cores, lambda: True), cores)

    def as_served(batch: int) -> int:
        served.logits(inputs[:batch])
        return batch

    measured(f"as served under load: {cores} workers, batch 1", as_served, cores, 1)
    single = {}
    for threads in sorted({1, cores}):
        forward = pooled([ort_session(onnx_path, threads)])
        single[threads] = 1000 / _timed_runs(
            functools.partial(forward, 1), min(images, 20), seconds
        )
        log(f"raw onnxruntime: one image, {threads} thread(s): {single[threads]:.1f} ms")
    best = max(configs, key=lambda c: c["images_per_s"])
    return {
        "ways": configs,
        "ceiling_images_per_s": best["images_per_s"],
        # The model's own CPU time per image in the fastest way: a request's share of the cores.
        "cpu_ms_per_image_at_ceiling": best["cpu_ms_per_image"],
        "model_ms_single_image": min(single.values()),
        "model_ms_single_image_by_threads": single,
    }

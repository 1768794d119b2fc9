"""Serving throughput and latency: the HTTP service against the raw model in-process.

    python benchmarks/serve.py [--checkpoint model/weights/unet-sigmoid.safetensors]
        [--side 256] [--concurrency 1 4 16] [--requests 64] [--seconds 60] [--device auto]
    python benchmarks/serve.py --workers 1 2 [--side 32] [--concurrency 16] [--requests 3000]

In one run it measures:

* the raw in-process throughput of the same model on the same device, for each backend the
  service can run it on (torch; on CPU also ONNX Runtime, on the graph the service exports): the
  best of a few ways of running it (one forward pass at a time with every core, one
  single-threaded pass per core in parallel, batches), and the single-image model time; the
  best over the backends is the ceiling;
* the service on its default backend (`UNET_BACKEND=auto`), started as a real uvicorn subprocess
  on a free loopback port, driven with PNG uploads to `POST /v1/models/{name}/mask` by 1, 4 and
  16 concurrent clients: images/s, p50 and p99 latency, failures, and the server's peak
  resident memory (VmHWM); on CPU, the same service on torch (`UNET_BACKEND=torch`);
* the same service with batching off (`UNET_MAX_BATCH=1`, `UNET_BATCH_WAIT_MS=0`);
* overload: a server with a tiny queue driven far past capacity must answer 503 with
  `Retry-After` (never hang), and answer normally again once the load drops.

With `--workers N M ...` it measures only the service with `UNET_WORKERS` = N, M, ... worker
processes on one port, in one run, at the largest `--concurrency`; with tiny images (`--side
32`) the HTTP path is the bottleneck, so the ratio is what extra processes buy.

Without the checkpoint (the shipped weights are trained separately), a random-weight model of
the same architecture is used: speed does not depend on the weights. Prints one JSON object on
stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import io
import json
import os
import platform
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from PIL import Image

from model import UNet, UNetConfig, load_checkpoint, save
from model.cards.checkpoint import checkpoint_digest, checkpoint_paths
from model.cards.to_onnx import INPUT_NAME, cached_export
from model.data.synth import generate_pair
from model.network.device import pick_device
from service.inference.backends import OrtBackend, ort_session
from service.inference.engine import plan_engine, usable_cores
from service.settings import Settings

DEFAULT_CHECKPOINT = Path("model/weights/unet-sigmoid.safetensors")
READY_TIMEOUT_S = 300.0


def log(message: str) -> None:
    """Progress on stderr; stdout carries only the JSON result."""
    print(message, file=sys.stderr, flush=True)


def prepare_models(checkpoint: Path, folder: Path) -> tuple[str, str]:
    """Put the checkpoint (or a random stand-in) in `folder`: (model name, weights kind)."""
    weights, meta = checkpoint_paths(checkpoint)
    if weights.is_file() and meta.is_file():
        shutil.copy(weights, folder / weights.name)
        shutil.copy(meta, folder / meta.name)
        return weights.stem, "checkpoint"
    log(f"{weights} not found: serving a random-weight model of the same architecture")
    torch.manual_seed(0)
    save(UNet(UNetConfig(depth=3, base_channels=16)).eval(), folder / f"{weights.stem}.safetensors")
    return weights.stem, "random (same architecture; speed does not depend on the weights)"


def synthetic_pngs(side: int, count: int, seed: int = 0, masks: bool = False) -> list[bytes]:
    """`count` synthetic microscopy images (or, with `masks`, their masks), PNG-encoded."""
    rng = np.random.default_rng(seed)
    pngs = []
    for _ in range(count):
        image, mask = generate_pair(rng, side)
        buffer = io.BytesIO()
        Image.fromarray(mask.astype(np.uint8) * 255 if masks else image).save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    return pngs


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
    served = OrtBackend(onnx_path, network, cores, threads=1, wide=cores, crowded=lambda: True)

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


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def memory_mb(pid: int, field: str = "VmHWM") -> float | None:
    """A memory figure of process `pid` from /proc (VmHWM: peak resident, VmRSS: now), in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


@contextmanager
def server(
    env: dict[str, str], workdir: Path, source: Path | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A uvicorn subprocess serving on 127.0.0.1; yields (base URL, process) once ready.

    `source`: run the service's code from this source tree instead of the installed one
    (after any PYTHONPATH that `env` gives).
    """
    port = free_port()
    full_env = {**os.environ, **env, "UNET_HOST": "127.0.0.1", "UNET_PORT": str(port)}
    if source is not None:
        full_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (env.get("PYTHONPATH"), str(source)) if p
        )
    log_path = workdir / f"server-{port}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "service"],
            env=full_env,
            cwd=source,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(url, process, log_path)
            yield url, process
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)


def _wait_ready(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited ({process.returncode}):\n{log_path.read_text()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"server not ready after {READY_TIMEOUT_S} s:\n{log_path.read_text()}")


BOUNDARY = "unet-benchmark-boundary"


def mask_request(host: str, port: int, model: str, png: bytes) -> bytes:
    """A complete keep-alive HTTP/1.1 multipart upload to the mask route, encoded once."""
    body = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + png
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    head = (
        f"POST /v1/models/{model}/mask HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class Connection:
    """One keep-alive HTTP/1.1 connection for pre-encoded requests.

    The clients share the two cores with the server on a small machine, so they are a few
    lines of asyncio rather than a full HTTP client: every cycle they spend is not the server's.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def send(self, request: bytes) -> tuple[int, dict[str, str]]:
        """Send `request`; (status, lower-cased headers) once the whole answer is read."""
        if self._streams is None:
            self._streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._streams
        writer.write(request)
        await writer.drain()
        status_line, *lines = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
        headers = dict(
            (name.strip().lower(), value.strip())
            for name, _, value in (line.partition(":") for line in lines if line)
        )
        await reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return int(status_line.split()[1]), headers

    async def close(self) -> None:
        """Close the connection, if open."""
        if self._streams is not None:
            _, writer = self._streams
            self._streams = None
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def drive(
    url: str, model: str, pngs: list[bytes], concurrency: int, requests: int, seconds: float
) -> dict[str, Any]:
    """`concurrency` clients posting masks until `requests` are done or `seconds` have passed."""
    host, port = url.removeprefix("http://").split(":")
    bodies = [mask_request(host, int(port), model, png) for png in pngs]
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    retry_after: list[str] = []
    issued = 0
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal issued
        connection = Connection(host, int(port))
        try:
            while issued < requests and time.perf_counter() < deadline:
                request = bodies[issued % len(bodies)]
                issued += 1
                started = time.perf_counter()
                try:
                    code, headers = await asyncio.wait_for(connection.send(request), 120)
                    status = str(code)
                    if code == 503 and "retry-after" in headers:
                        retry_after.append(headers["retry-after"])
                except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as error:
                    status = type(error).__name__
                    await connection.close()
                statuses[status] = statuses.get(status, 0) + 1
                if status == "200":
                    latencies.append(time.perf_counter() - started)
        finally:
            await connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    ok = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {
        "concurrency": concurrency,
        "requests": sum(statuses.values()),
        "failed": sum(n for s, n in statuses.items() if s != "200"),
        "statuses": statuses,
        "images_per_s": len(latencies) / wall,
        "mean_ms": float(ok.mean()),
        "p50_ms": float(np.percentile(ok, 50)),
        "p99_ms": float(np.percentile(ok, 99)),
        "retry_after_seen": sorted(set(retry_after)),
    }


def engine_totals(url: str) -> dict[str, float]:
    """Cumulative engine counters from /metrics: passes, images and forward seconds."""
    wanted = {
        "unet_batch_size_count": "passes",
        "unet_batch_size_sum": "images",
        "unet_inference_seconds_sum": "forward_s",
    }
    totals = dict.fromkeys(wanted.values(), 0.0)
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        name = line.split("{")[0].split(" ")[0]
        if name in wanted:
            totals[wanted[name]] += float(line.split()[-1])
    return totals


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time that process `pid` (all its threads) has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drive_with_engine_view(
    url: str,
    model: str,
    pngs: list[bytes],
    concurrency: int,
    requests: int,
    seconds: float,
    pid: int | None = None,
) -> dict[str, Any]:
    """`drive`, plus the engine's own view from /metrics (images per pass, ms per pass) and,
    given the server's `pid`, the CPU time the server and these clients spent per request."""
    before = engine_totals(url)
    server_cpu, client_cpu = cpu_seconds(pid) if pid else 0.0, time.process_time()
    result = asyncio.run(drive(url, model, pngs, concurrency, requests, seconds))
    client_cpu = time.process_time() - client_cpu
    if pid and result["requests"]:
        server_cpu = cpu_seconds(pid) - server_cpu
        result["server_cpu_ms_per_request"] = 1000 * server_cpu / result["requests"]
        result["client_cpu_ms_per_request"] = 1000 * client_cpu / result["requests"]
    after = engine_totals(url)
    passes = after["passes"] - before["passes"]
    if passes:
        result["mean_batch_size"] = (after["images"] - before["images"]) / passes
        result["forward_ms_per_pass"] = 1000 * (after["forward_s"] - before["forward_s"]) / passes
    return result


def serve_run(
    env: dict[str, str], workdir: Path, model: str, pngs: list[bytes], args: argparse.Namespace
) -> dict[str, Any]:
    """Start a server with `env` and drive it at each concurrency level."""
    levels = {}
    with server(env, workdir) as (url, process):
        backend = httpx.get(f"{url}/v1/models/{model}", timeout=10).json().get("backend")
        log(f"  backend: {backend}")
        for concurrency in args.concurrency:
            asyncio.run(drive(url, model, pngs, concurrency, 2 * concurrency, args.seconds))
            result = drive_with_engine_view(
                url, model, pngs, concurrency, args.requests, args.seconds, process.pid
            )
            log(
                f"  c={concurrency}: {result['images_per_s']:.2f} images/s, "
                f"p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
                f"failed {result['failed']}, batch {result.get('mean_batch_size', 0):.1f}, "
                f"forward {result.get('forward_ms_per_pass', 0):.1f} ms, CPU per request: "
                f"server {result.get('server_cpu_ms_per_request', 0):.1f} ms, "
                f"clients {result.get('client_cpu_ms_per_request', 0):.1f} ms"
            )
            levels[str(concurrency)] = result
        peak = memory_mb(process.pid)
    return {"backend": backend, "levels": levels, "peak_rss_mb": peak}


def overload_run(
    env: dict[str, str], workdir: Path, model: str, pngs: list[bytes], seconds: float
) -> dict[str, Any]:
    """Far past capacity with a tiny queue: 503 + Retry-After, then normal service again."""
    tiny = {**env, "UNET_QUEUE_SIZE": "2", "UNET_REQUEST_TIMEOUT_S": "10"}
    with server(tiny, workdir) as (url, _):
        flood = asyncio.run(drive(url, model, pngs, 64, 256, seconds))
        time.sleep(1)
        after = asyncio.run(drive(url, model, pngs, 1, 10, seconds))
    log(f"  overload: {flood['statuses']}, then {after['statuses']}")
    return {"flood_c64": flood, "after_c1": after}


def workers_run(
    env: dict[str, str], workdir: Path, model: str, pngs: list[bytes], args: argparse.Namespace
) -> dict[str, Any]:
    """The same load on 1, 2, ... worker processes (UNET_WORKERS): images/s and their ratio."""
    concurrency = max(args.concurrency)
    runs: dict[str, Any] = {}
    for workers in args.workers:
        with server({**env, "UNET_WORKERS": str(workers)}, workdir) as (url, process):
            # Every worker warms up on its own; readiness on fresh connections reaches them all.
            for _ in range(8 * workers):
                _wait_ready(url, process, workdir / "server.log")
            asyncio.run(drive(url, model, pngs, concurrency, 20 * concurrency, args.seconds))
            result = asyncio.run(drive(url, model, pngs, concurrency, args.requests, args.seconds))
        log(
            f"  {workers} worker(s), c={concurrency}: {result['images_per_s']:.1f} images/s, "
            f"p50 {result['p50_ms']:.1f} ms, failed {result['failed']}"
        )
        runs[str(workers)] = result
    first, *_ = args.workers
    return {
        "concurrency": concurrency,
        "runs": runs,
        "speedup_vs_first": {
            n: runs[n]["images_per_s"] / runs[str(first)]["images_per_s"] for n in runs
        },
    }


def service_summary(
    raw: dict[str, Any], run: dict[str, Any], concurrency: list[int]
) -> dict[str, Any]:
    """How close one service run comes to the in-process ceilings (`raw`: by backend)."""
    top, one = str(max(concurrency)), str(min(concurrency))
    high, low = run["levels"][top], run["levels"][one]
    forward = low.get("forward_ms_per_pass", float("nan"))
    best = max(r["ceiling_images_per_s"] for r in raw.values())
    fastest_single = min(r["model_ms_single_image"] for r in raw.values())
    own = raw.get(run["backend"]) or {}
    return {
        "backend": run["backend"],
        f"throughput_vs_best_ceiling_c{top}": high["images_per_s"] / best,
        f"throughput_vs_own_backend_ceiling_c{top}": high["images_per_s"]
        / own.get("ceiling_images_per_s", float("nan")),
        f"failed_c{top}": high["failed"],
        # Overhead: what a request spends beyond the forward pass the service ran for it.
        f"overhead_ms_c{one}": low["mean_ms"] - forward,
        f"overhead_fraction_of_forward_c{one}": low["mean_ms"] / forward - 1,
        # Stricter: against the fastest single-image pass measured in-process on any backend.
        f"latency_vs_best_raw_single_image_c{one}": low["mean_ms"] / fastest_single - 1,
        f"latency_vs_own_backend_single_image_c{one}": low["mean_ms"]
        / own.get("model_ms_single_image", float("nan"))
        - 1,
        **cpu_budget(own, high, top),
    }


def cpu_budget(own: dict[str, Any], high: dict[str, Any], top: str) -> dict[str, Any]:
    """Where a request's CPU time goes under load, against the model pass alone.

    With every core busy, throughput is cores / CPU time per request; the model's own pass is
    `cpu_ms_per_image_at_ceiling`, and whatever the server and the clients (on the same cores
    here) spend beyond it is what keeps the service under the in-process ceiling.
    """
    model = own.get("cpu_ms_per_image_at_ceiling")
    server = high.get("server_cpu_ms_per_request")
    if model is None or server is None:
        return {}
    clients = high["client_cpu_ms_per_request"]
    return {
        f"cpu_ms_per_request_c{top}": {
            "model_pass_at_the_ceiling": model,
            "server": server,
            "clients": clients,
            "beyond_the_model": server + clients - model,
        },
        f"model_share_of_cpu_c{top}": model / (server + clients),
    }


def summary(
    raw: dict[str, Any],
    services: dict[str, dict[str, Any]],
    unbatched: dict[str, Any],
    concurrency: list[int],
) -> dict[str, Any]:
    """The figures the issues ask for, from the runs: the default service first."""
    top = str(max(concurrency))
    default = services["default"]["levels"][top]["images_per_s"]
    return {
        "ceiling_images_per_s_by_backend": {
            name: r["ceiling_images_per_s"] for name, r in raw.items()
        },
        f"batching_speedup_c{top}": default / unbatched["levels"][top]["images_per_s"],
        **{name: service_summary(raw, run, concurrency) for name, run in services.items()},
    }


def main() -> None:
    """Run the benchmark and print its JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=64, help="per concurrency level")
    parser.add_argument("--seconds", type=float, default=60, help="time bound per level")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-overload", action="store_true", help="skip the overload check")
    parser.add_argument(
        "--workers", type=int, nargs="+", help="compare these UNET_WORKERS counts, nothing else"
    )
    args = parser.parse_args()
    if args.workers:
        print(json.dumps(compare_workers(args), indent=2))
        return

    device = pick_device(args.device)
    load_at_start = os.getloadavg()  # a shared machine's other work lowers every figure
    with tempfile.TemporaryDirectory(prefix="unet-bench-") as tmp:
        workdir = Path(tmp)
        models = workdir / "models"
        models.mkdir()
        model, weights = prepare_models(args.checkpoint, models)
        pngs = synthetic_pngs(args.side, 16)
        network, _ = load_checkpoint(models / f"{model}.safetensors", device)
        log(f"raw in-process throughput on {device}")
        raw = {"torch": raw_throughput(network, device, args.side, args.requests, args.seconds / 3)}
        if device.type == "cpu":  # the service runs torch on a GPU
            digest = checkpoint_digest(models / f"{model}.safetensors")
            onnx_path, _ = cached_export(network, digest, workdir / "onnx")
            raw["onnxruntime"] = raw_onnxruntime(
                network, onnx_path, args.side, args.requests, args.seconds / 3
            )
        del network
        env = {
            "UNET_MODEL_DIR": str(models),
            "UNET_STATE_DIR": str(workdir / "state"),
            "UNET_DEVICE": args.device,
            "UNET_LOG_LEVEL": "warning",
        }
        plan = plan_engine(Settings(model_dir=models), device)
        log(f"service, default backend and batching ({plan.limits})")
        services = {"default": serve_run(env, workdir, model, pngs, args)}
        if device.type == "cpu":
            log("service on torch")
            torch_env = {**env, "UNET_BACKEND": "torch", "UNET_STATE_DIR": str(workdir / "t")}
            services["torch"] = serve_run(torch_env, workdir, model, pngs, args)
        off = {**env, "UNET_MAX_BATCH": "1", "UNET_BATCH_WAIT_MS": "0"}
        log("service, batching off")
        unbatched = serve_run(off, workdir, model, pngs, args)
        overload = (
            None if args.no_overload else overload_run(env, workdir, model, pngs, args.seconds)
        )

    result = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu_cores": usable_cores(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "checkpoint": str(args.checkpoint),
        "weights": weights,
        "image_side": args.side,
        "engine": {
            "max_batch": plan.limits.max_batch,
            "batch_wait_ms": plan.limits.wait_s * 1000,
            "workers": plan.limits.workers,
            "torch_threads": plan.torch_threads,
            "channels_last": plan.channels_last,
        },
        "load_average_at_start": load_at_start,
        "raw": raw,
        "service": services["default"],
        "service_torch": services.get("torch"),
        "service_batching_off": unbatched,
        "overload": overload,
        "summary": summary(raw, services, unbatched, args.concurrency),
    }
    print(json.dumps(result, indent=2))


def compare_workers(args: argparse.Namespace) -> dict[str, Any]:
    """The `--workers` mode: one server per worker count, the same load on each."""
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="unet-bench-") as tmp:
        workdir = Path(tmp)
        models = workdir / "models"
        models.mkdir()
        model, weights = prepare_models(args.checkpoint, models)
        env = {
            "UNET_MODEL_DIR": str(models),
            "UNET_STATE_DIR": str(workdir / "state"),
            "UNET_DEVICE": args.device,
            "UNET_LOG_LEVEL": "warning",
        }
        log(f"service with {args.workers} worker process(es), {args.side} x {args.side} images")
        runs = workers_run(env, workdir, model, synthetic_pngs(args.side, 16), args)
    return {
        "cpu_cores": usable_cores(),
        "load_average_before": load,
        "platform": platform.platform(),
        "weights": weights,
        "image_side": args.side,
        "workers": runs,
    }


if __name__ == "__main__":
    main()

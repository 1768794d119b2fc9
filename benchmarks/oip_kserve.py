"""The service's v2 binary tensors against KServe's own Python model server, and its own v1.

    python -m benchmarks.oip_kserve [--side 256] [--concurrency 1 16] [--seconds 6] [--rounds 3]

Two servers on 127.0.0.1, the same network on ONNX Runtime in both: the service (`python -m
service`, default settings) and KServe's `ModelServer` with a v2 model wrapping the project's ONNX
export of the same checkpoint (`benchmarks.kserve_server`). Three ways to get the mask of one 8-bit
grey image, each from a keep-alive client per thread (httpx), each reading its answer back into a
numpy mask:

* `service_v2_binary` and `kserve_v2_binary`: the very same request body, written by
  `tritonclient.http` (a binary UINT8 tensor, `mask` asked for as binary), posted to each
  server's `/v2/models/{model}/infer`; the answer read by tritonclient's `InferResult`.
* `service_v1_png`: a PNG upload to the service's `/v1/models/{model}/mask`; the PNG answer
  decoded with Pillow.

Short runs of the three, interleaved round by round at each concurrency, so the load the
machine's other users put on it lands on all three alike; read the ratios, and the CPU each
server spends per image (from /proc), which that load moves less than the rate. Prints one JSON
object on stdout (each run's figures and the medians' ratios); progress goes to stderr. Needs
the optional extras `.[kserve]` and `.[dev]` (tritonclient).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import tritonclient.http as triton
from PIL import Image

from benchmarks.launch import free_port, log, memory_kib, wait_ready
from benchmarks.oip import Send, drive
from model.data.synth import generate_pair, pair_rng
from tests.helpers import png
from tests.servers import ServiceProcess

WEIGHTS = Path(__file__).parents[1] / "model" / "weights"
PROTOCOLS = ("service_v2_binary", "kserve_v2_binary", "service_v1_png")


def triton_body(image: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """tritonclient's own request for the mask of `image`: the body and its headers."""
    tensor = triton.InferInput("image", [1, *image.shape], "UINT8")
    tensor.set_data_from_numpy(image[None], binary_data=True)
    wanted = [triton.InferRequestedOutput("mask", binary_data=True)]
    body, json_size = triton.InferenceServerClient.generate_request_body([tensor], outputs=wanted)
    headers = {"Inference-Header-Content-Length": str(json_size), "Accept-Encoding": "identity"}
    return body, headers


def v2_send(url: str, body: bytes, headers: dict[str, str], shape: tuple[int, ...]) -> Send:
    """Post the v2 request and read the mask back as tritonclient reads it."""

    def send(client: httpx.Client) -> httpx.Response:
        response = client.post(url, content=body, headers=headers)
        if response.status_code == 200:
            length = response.headers.get("inference-header-content-length")
            result = triton.InferResult.from_response_body(
                response.content, header_length=None if length is None else int(length)
            )
            mask = result.as_numpy("mask")
            assert mask.shape == (1, 1, *shape), mask.shape
        return response

    return send


def v1_send(url: str, data: bytes, shape: tuple[int, ...]) -> Send:
    """Upload the PNG and decode the PNG mask it answers."""

    def send(client: httpx.Client) -> httpx.Response:
        response = client.post(url, files={"image": ("cells.png", data, "image/png")})
        if response.status_code == 200:
            mask = np.asarray(Image.open(io.BytesIO(response.content)))
            assert mask.shape == shape, mask.shape
        return response

    return send


@contextmanager
def kserve_server(checkpoint: Path, workdir: Path) -> Iterator[tuple[str, int]]:
    """KServe's model server for `checkpoint` on 127.0.0.1: yields (base URL, pid) once ready."""
    port = free_port()
    log_path = workdir / "kserve.log"
    with log_path.open("wb") as output:
        command = [sys.executable, "-m", "benchmarks.kserve_server", "--port", str(port)]
        process = subprocess.Popen(
            [*command, "--checkpoint", str(checkpoint)],
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).parents[1],
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(base, process, 300, lambda: log_path.read_text()[-2000:], "/v2/health/ready")
            yield base, process.pid
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)


def cpu_s(pid: int) -> float:
    """CPU seconds process `pid` has used so far (user and system, every thread), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(send: Send, concurrency: int, seconds: float, server_pid: int) -> dict[str, Any]:
    """`drive`'s figures, and the CPU milliseconds per image of the server and of this client:
    on a shared machine the rate follows the other users' load, the CPU spent per image less."""
    server, client = cpu_s(server_pid), time.process_time()
    figures = drive(send, concurrency, seconds)
    images = max(figures["images"], 1)
    figures["server_cpu_ms_per_image"] = round(1000 * (cpu_s(server_pid) - server) / images, 1)
    figures["client_cpu_ms_per_image"] = round(1000 * (time.process_time() - client) / images, 1)
    return figures


def ratios(runs: list[dict[str, Any]], concurrency: int) -> dict[str, float]:
    """Median images/s of the service's v2 over KServe's v2 and over its own v1."""
    rate = {
        protocol: statistics.median(
            r["images_per_s"]
            for r in runs
            if r["protocol"] == protocol and r["concurrency"] == concurrency
        )
        for protocol in PROTOCOLS
    }
    cpu = {
        protocol: statistics.median(
            r["server_cpu_ms_per_image"]
            for r in runs
            if r["protocol"] == protocol and r["concurrency"] == concurrency
        )
        for protocol in PROTOCOLS
    }
    return {
        "service_v2_over_kserve_v2": round(rate["service_v2_binary"] / rate["kserve_v2_binary"], 2),
        "service_v2_over_service_v1": round(rate["service_v2_binary"] / rate["service_v1_png"], 2),
        **{f"median_{p}_images_per_s": round(r, 2) for p, r in rate.items()},
        **{f"median_{p}_server_cpu_ms_per_image": round(c, 1) for p, c in cpu.items()},
    }


def main() -> None:
    """Run the comparison and print the figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="unet-sigmoid")
    args = parser.parse_args()
    image = generate_pair(pair_rng(2026, 0), args.side)[0]
    shape = image.shape
    body, headers = triton_body(image)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        service = ServiceProcess(WEIGHTS, workdir / "state", {"UNET_LOG_LEVEL": "WARNING"})
        try:
            with kserve_server(WEIGHTS / f"{args.model}.safetensors", workdir) as (kserve, pid):
                senders = {
                    "service_v2_binary": v2_send(
                        f"{service.base}/v2/models/{args.model}/infer", body, headers, shape
                    ),
                    "kserve_v2_binary": v2_send(
                        f"{kserve}/v2/models/{args.model}/infer", body, headers, shape
                    ),
                    "service_v1_png": v1_send(
                        f"{service.base}/v1/models/{args.model}/mask", png(image), shape
                    ),
                }
                pids = {"service": service.process.pid, "kserve": pid}
                for send in senders.values():  # warm each path once
                    drive(send, 1, 1.0)
                for concurrency in args.concurrency:
                    for round_ in range(args.rounds):
                        for protocol, send in senders.items():
                            server = pids[protocol.split("_")[0]]
                            figures = measured(send, concurrency, args.seconds, server)
                            row = {"concurrency": concurrency, "round": round_}
                            row |= {"protocol": protocol, **figures}
                            log(json.dumps(row))
                            runs.append(row)
                memory = {"service": service.memory_kib(), "kserve": memory_kib(pid)}
        finally:
            service.stop()
    result = {
        "machine": {"cores": os.cpu_count(), "load_average": os.getloadavg()},
        "side": args.side,
        "seconds_per_run": args.seconds,
        "bytes_sent": {"v2": len(body), "v1_png": len(png(image))},
        "memory_kib": memory,
        "ratios": {c: ratios(runs, c) for c in args.concurrency},
        "runs": runs,
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

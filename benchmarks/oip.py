"""v2 with binary tensors against v1's multipart PNG upload, on one running service.

    python -m benchmarks.oip [--sides 256 1024] [--concurrency 1 16] [--seconds 8]
        [--rounds 2] [--model unet-sigmoid]

Both ask for the same thing, the mask of one 8-bit grey image: v1 uploads a PNG to
`POST /v1/models/{model}/mask` and gets a PNG back; v2 posts the raw pixels as a UINT8 tensor
(binary tensor extension) to `POST /v2/models/{model}/infer` asking only for `mask`, as raw bytes.
Each client thread keeps one keep-alive connection (httpx) and sends one request after another.
Rounds interleave v1 and v2 at each size and concurrency, so load from elsewhere on the machine
lands on both. Prints one JSON object on stdout (bytes sent and received per image, images/s,
p50 and p99 latency per protocol, size and concurrency); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from model.data.decoding import image_from_array, image_from_bytes
from model.data.synth import generate_pair, pair_rng
from service.api.oip.tensors import OutputTensor, encode_response, read_request
from service.inference.encoding import mask_png
from tests.helpers import png
from tests.servers import ServiceProcess

WEIGHTS = Path(__file__).parents[1] / "model" / "weights"
Send = Callable[[httpx.Client], httpx.Response]


def v1_request(base: str, model: str, image: np.ndarray) -> tuple[Send, int]:
    """A v1 mask upload of `image` as PNG, and its body size."""
    data = png(image)
    url = f"{base}/v1/models/{model}/mask"
    body_size = len(data)

    def send(client: httpx.Client) -> httpx.Response:
        return client.post(url, files={"image": ("cells.png", data, "image/png")})

    return send, body_size


def _v2_body(image: np.ndarray) -> tuple[bytes, int]:
    """A v2 infer body of `image` as a binary UINT8 tensor asking for the raw mask; JSON length."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "UINT8",
                    "shape": [1, *image.shape],
                    "parameters": {"binary_data_size": image.nbytes},
                }
            ],
            "outputs": [{"name": "mask", "parameters": {"binary_data": True}}],
        }
    ).encode()
    return header + image.tobytes(), len(header)


def v2_request(base: str, model: str, image: np.ndarray) -> tuple[Send, int]:
    """A v2 infer of `image` as a binary UINT8 tensor asking for the mask as raw bytes."""
    body, length = _v2_body(image)
    # identity: httpx asks for gzip by default, which v1's PNG answer never gets
    headers = {"Inference-Header-Content-Length": str(length), "Accept-Encoding": "identity"}
    url = f"{base}/v2/models/{model}/infer"

    def send(client: httpx.Client) -> httpx.Response:
        return client.post(url, content=body, headers=headers)

    return send, len(body)


def drive(send: Send, concurrency: int, seconds: float) -> dict[str, Any]:
    """`concurrency` keep-alive clients sending back to back for `seconds`: the figures.

    Every request started before the time is up counts, and the rate is taken over the time
    until the last of them is answered, so slow requests (1024 px at concurrency 16) count whole.
    """
    latencies: list[float] = []
    received: list[int] = []
    finished: list[float] = []
    failures = [0]
    lock = threading.Lock()
    start = threading.Barrier(concurrency + 1)
    stop = [0.0]

    def client_loop() -> None:
        with httpx.Client(timeout=300) as client:
            start.wait()
            while time.monotonic() < stop[0]:
                began = time.perf_counter()
                response = send(client)
                took = time.perf_counter() - began
                with lock:
                    finished.append(time.monotonic())
                    if response.status_code == 200:
                        latencies.append(took)
                        received.append(len(response.content))
                    else:
                        failures[0] += 1

    threads = [threading.Thread(target=client_loop) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    began = time.monotonic()
    stop[0] = began + seconds
    start.wait()
    for thread in threads:
        thread.join()
    elapsed = max(finished, default=began + seconds) - began
    ordered = sorted(latencies)
    return {
        "images": len(latencies),
        "images_per_s": round(len(latencies) / elapsed, 2),
        "p50_ms": round(1000 * statistics.median(ordered), 1) if ordered else None,
        "p99_ms": round(1000 * ordered[math.ceil(0.99 * len(ordered)) - 1], 1) if ordered else None,
        "bytes_received": int(statistics.median(received)) if received else None,
        "failures": failures[0],
    }


def codec_ms(image: np.ndarray, repeats: int = 30) -> dict[str, float]:
    """Median milliseconds of each protocol's own work on one image, model aside: v1 decodes
    the PNG upload and encodes the PNG mask; v2 parses the tensor and writes the raw mask."""
    spec = 1  # one grey channel in [0, 1]; a card's normalisation costs both protocols alike
    upload = png(image)
    body, length = _v2_body(image)
    mask = image > 128

    def v1() -> None:
        image_from_bytes(upload, spec, "cells.png")
        mask_png(mask)

    def v2() -> None:
        request = read_request(body, str(length))
        image_from_array(np.array(request.inputs[0].data[0]), spec, "image[0]")
        encode_response(
            {"model_name": "m"},
            [OutputTensor("mask", "UINT8", mask[None, None].astype(np.uint8), True)],
        )

    timings = {}
    for name, work in (("v1_png", v1), ("v2_binary", v2)):
        runs = []
        for _ in range(repeats):
            began = time.perf_counter()
            work()
            runs.append(time.perf_counter() - began)
        timings[name] = round(1000 * statistics.median(runs), 3)
    return timings


def main() -> None:
    """Run the comparison and print the figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model", default="unet-sigmoid")
    args = parser.parse_args()
    results: list[dict[str, Any]] = []
    codecs: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as state:
        service = ServiceProcess(WEIGHTS, Path(state), {"UNET_LOG_LEVEL": "WARNING"})
        try:
            for side in args.sides:
                image = generate_pair(pair_rng(2026, 0), side)[0]
                codecs[side] = codec_ms(image)
                print(json.dumps({"side": side, "codec_ms": codecs[side]}), file=sys.stderr)
                senders = {
                    "v1_png": v1_request(service.base, args.model, image),
                    "v2_binary": v2_request(service.base, args.model, image),
                }
                for concurrency in args.concurrency:
                    for round_ in range(args.rounds):
                        for protocol, (send, sent) in senders.items():
                            figures = drive(send, concurrency, args.seconds)
                            row = {
                                "side": side,
                                "concurrency": concurrency,
                                "round": round_,
                                "protocol": protocol,
                                "bytes_sent": sent,
                                **figures,
                            }
                            print(json.dumps(row), file=sys.stderr)
                            results.append(row)
            memory = service.memory_kib()
        finally:
            service.stop()
    print(
        json.dumps(
            {
                "machine": {
                    "cpu": platform.processor() or platform.machine(),
                    "python": sys.version.split()[0],
                },
                "seconds_per_run": args.seconds,
                "server_memory_kib": memory,
                "codec_ms_per_image": codecs,
                "runs": results,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()

"""A real `python -m service` drops the queued work of clients that disconnected."""

from __future__ import annotations

import re
import socket
import struct
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from model.data.synth import generate_pair, pair_rng
from service.inference.plan import usable_cores
from tests.helpers import TINY_MODEL, png, until
from tests.servers import ServiceProcess

MASK = f"/v1/models/{TINY_MODEL}/mask"
QUEUE = 16
ABANDONED = 40
LIVE = 8
BUSY = min(2, usable_cores())  # the large passes that hold the model's workers


@pytest.fixture(scope="module")
def server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """The service with a short queue, and large images run whole (slow passes)."""
    env = {
        "UNET_QUEUE_SIZE": str(QUEUE),
        "UNET_TILE_THRESHOLD_PIXELS": str(4096 * 4096),
        "UNET_BACKEND": "torch",  # the slower backend keeps the workers busy for longer
        "UNET_TILE_SIZE": "64",
        # However many cores: the model's passes are the BUSY large ones while they run.
        "UNET_MODEL_MAX_WORKERS": str(BUSY),
        "UNET_LOG_LEVEL": "warning",
    }
    log = tmp_path_factory.mktemp("log") / "stderr.log"
    with log.open("wb") as stderr:
        running = ServiceProcess(tiny_model_dir, tmp_path_factory.mktemp("state"), env, stderr)
    yield running
    running.stop()
    said = log.read_text()
    assert "Traceback" not in said, said  # a dropped request is no error


def metric(base: str, name: str) -> float:
    """The value of the unlabelled or `model="tiny"` sample `name` on /metrics."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    found = re.search(rf"^{name}(?:{{model=\"{TINY_MODEL}\"}})? (\S+)$", text, re.MULTILINE)
    assert found is not None, f"no {name} on /metrics"
    return float(found.group(1))


def started_passes(base: str) -> float:
    """Forward passes the service has begun (counted as each batch starts)."""
    return metric(base, "unet_batch_size_count")


def raw_upload(port: int, image: bytes) -> bytes:
    """A complete HTTP/1.1 request uploading `image` to the mask endpoint."""
    boundary = "unet-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + image
        + f"\r\n--{boundary}--\r\n".encode()
    )
    head = (
        f"POST {MASK} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


def send_and_reset(port: int, request: bytes) -> None:
    """Send `request`, then reset the connection 5 ms later without reading the answer."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(request)
    time.sleep(0.005)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def post(base: str, image: bytes) -> int:
    """The status of a mask request from a client that waits for it."""
    files = {"image": ("x.png", image, "image/png")}
    return httpx.post(f"{base}{MASK}", files=files, timeout=120).status_code


def test_work_of_clients_that_left_is_dropped_and_takes_no_room(server: ServiceProcess) -> None:
    base = server.base
    small = png(generate_pair(pair_rng(9, 0), 64)[0])
    rng = np.random.default_rng(0)
    # Seconds per pass even on a quiet machine (1024 x 1024 took 0.3 to 0.7 s: too short to
    # still hold the workers when the abandoned requests arrive).
    large = png(rng.integers(0, 256, (2048, 2048), dtype=np.uint8))
    passes, started, abandoned = (
        metric(base, "unet_inference_seconds_count"),
        started_passes(base),
        metric(base, "unet_abandoned_requests_total"),
    )

    def settled() -> bool:  # every abandoned request dropped (or run), none left in the queue
        dropped = metric(base, "unet_abandoned_requests_total") - abandoned
        ran = max(0.0, started_passes(base) - started - 2)
        return dropped + ran >= ABANDONED - 2 and metric(base, "unet_queue_depth") == 0

    with ThreadPoolExecutor(2 + LIVE) as pool:
        busy = [pool.submit(post, base, large) for _ in range(2)]  # every worker, for seconds
        until(lambda: started_passes(base) - started >= BUSY, "the large passes never started")
        for _ in range(ABANDONED):  # more than the queue holds
            send_and_reset(server.port, raw_upload(server.port, small))
        until(settled, "the abandoned requests still hold the queue")
        live = [pool.submit(post, base, small) for _ in range(LIVE)]
        statuses = [future.result() for future in busy + live]

    assert statuses == [200] * (2 + LIVE), "a client that waited was turned away"
    until(lambda: metric(base, "unet_queue_depth") == 0, "the queue did not drain")
    dropped = metric(base, "unet_abandoned_requests_total") - abandoned
    ran = metric(base, "unet_inference_seconds_count") - passes - (2 + LIVE)
    assert ran <= ABANDONED // 10, f"{ran} of {ABANDONED} abandoned requests still ran"
    assert dropped >= ABANDONED - ran - 2, f"only {dropped} abandoned requests were dropped"

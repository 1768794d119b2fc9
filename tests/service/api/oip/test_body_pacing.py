"""v2 bodies meet v1's pacing and size limits on a real socket, answered as `{"error": ...}`."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import TINY_MODEL
from tests.servers import ServiceProcess

LIMITS = {
    "UNET_BODY_TIMEOUT_S": "1",
    "UNET_MAX_UPLOAD_BYTES": "100000",
    "UNET_LOG_LEVEL": "warning",
}
INFER = f"/v2/models/{TINY_MODEL}/infer".encode()


@pytest.fixture(scope="module")
def server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    running = ServiceProcess(tiny_model_dir, tmp_path_factory.mktemp("state"), LIMITS)
    yield running
    running.stop()


def answer(sock: socket.socket) -> tuple[int, bytes, dict[str, str]]:
    """(status, raw head, JSON body) of what the server sends until it closes."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head.lower(), json.loads(body)


def test_a_stalled_v2_body_gets_408_in_the_protocols_shape(server: ServiceProcess) -> None:
    head = b"POST " + INFER + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n"
    started = time.monotonic()
    with server.connect() as sock:
        sock.sendall(head + b'{"inputs": [')  # ... and then nothing more
        status, raw_head, body = answer(sock)
    assert status == 408 and "UNET_BODY_TIMEOUT_S" in body["error"]
    assert b"content-type: application/json" in raw_head and set(body) == {"error"}
    assert time.monotonic() - started < 5


def test_a_v2_body_over_the_limit_is_refused_from_its_length(server: ServiceProcess) -> None:
    head = b"POST " + INFER + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n"
    with server.connect() as sock:
        sock.sendall(head)  # no body byte is needed for the answer
        status, _, body = answer(sock)
    assert status == 413 and "UNET_MAX_UPLOAD_BYTES" in body["error"]

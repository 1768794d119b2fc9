"""The HTTP server's own refusals of a request head (431 too large or too many headers, 408 too
slow) answer `{"error"}` on `/v2`, as the protocol says, and problem details elsewhere."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import ServiceProcess

LIMITS = {
    "UNET_TILE_SIZE": "64",
    "UNET_LOG_LEVEL": "warning",
    "UNET_MAX_HEADER_BYTES": "8192",
    "UNET_MAX_HEADER_COUNT": "20",
    "UNET_HEAD_TIMEOUT_S": "1",
}
INFER = b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\n"


@pytest.fixture(scope="module")
def server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """The service with small head limits."""
    running = ServiceProcess(tiny_model_dir, tmp_path_factory.mktemp("state"), LIMITS)
    yield running
    running.stop()


def refusal(
    server: ServiceProcess, *pieces: bytes, pause_s: float = 0.0
) -> tuple[int, bytes, bytes]:
    """(status, head, body) of what the server answers to `pieces`, sent `pause_s` apart."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        try:
            for piece in pieces:
                sock.sendall(piece)
                time.sleep(pause_s)  # a slow client, not a wait for the server
        except OSError:  # the server hung up mid-head
            pass
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head.lower(), body


@pytest.mark.parametrize(
    ("pieces", "status", "setting"),
    [
        ((INFER + b"X-Big: " + b"a" * 20_000,), 431, "UNET_MAX_HEADER_BYTES"),
        (
            (INFER + b"".join(b"X-%d: y\r\n" % i for i in range(50)) + b"\r\n",),
            431,
            "UNET_MAX_HEADER_COUNT",
        ),
    ],
    ids=["head-too-large", "too-many-headers"],
)
def test_a_refused_v2_head_gets_the_protocols_error(
    server: ServiceProcess, pieces: tuple[bytes, ...], status: int, setting: str
) -> None:
    answered, head, body = refusal(server, *pieces)
    assert answered == status
    assert b"content-type: application/json" in head
    assert setting in json.loads(body)["error"]
    v1_status, v1_head, v1_body = refusal(
        server, pieces[0].replace(INFER, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    )
    assert v1_status == status and b"application/problem+json" in v1_head
    assert setting in json.loads(v1_body)["detail"]


def test_a_slow_v2_head_gets_408_as_the_protocols_error(server: ServiceProcess) -> None:
    answered, head, body = refusal(server, INFER, *[b"X"] * 30, pause_s=0.2)
    assert answered == 408 and b"content-type: application/json" in head
    assert "UNET_HEAD_TIMEOUT_S" in json.loads(body)["error"]

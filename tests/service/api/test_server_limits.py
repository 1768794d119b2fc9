"""Connection limits of a real `python -m service` process, probed with raw sockets.

Each probe is bounded in time: a limit that does not hold fails the test instead of hanging it.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import TINY_MODEL
from tests.hostile.make_corpus import dataset_zip, tiff_bomb
from tests.servers import ServiceProcess

KEY = "s3cret"
QUIET = {"UNET_TILE_SIZE": "64", "UNET_LOG_LEVEL": "warning"}
LIMITS = {
    **QUIET,
    "UNET_MAX_HEADER_BYTES": "8192",
    "UNET_MAX_HEADER_COUNT": "20",
    "UNET_HEAD_TIMEOUT_S": "1",
    "UNET_BODY_TIMEOUT_S": "1",
    "UNET_MAX_CONNECTIONS": "6",
    "UNET_API_KEY": KEY,
}
MiB = 1 << 20


@pytest.fixture(scope="module")
def server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """The service with small connection limits and an API key."""
    running = ServiceProcess(tiny_model_dir, tmp_path_factory.mktemp("state"), LIMITS)
    yield running
    running.stop()


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def problem_of(response: bytes) -> tuple[int, dict[str, object], bytes]:
    """(status, problem body, raw head) of a raw HTTP/1.1 problem response."""
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"application/problem+json" in head.lower(), head
    return status, json.loads(body), head


def test_an_oversized_head_gets_431_and_a_closed_connection(server: ServiceProcess) -> None:
    with server.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000)
        status, body, _ = problem_of(read_all(sock))
    assert status == 431 and "UNET_MAX_HEADER_BYTES" in str(body["detail"])


def test_a_16_mib_header_is_cut_off_long_before_its_end(server: ServiceProcess) -> None:
    before = server.memory_kib()["VmRSS"]
    sent, started = 0, time.monotonic()
    with server.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        try:
            while sent < 16 * MiB:
                sent += sock.send(b"a" * 65536)
        except OSError:  # reset or broken pipe: the server hung up mid-header
            pass
    assert sent < 16 * MiB and time.monotonic() - started < 10
    assert server.memory_kib()["VmRSS"] - before < 16 * 1024  # KiB: no 16 MiB buffered


def test_too_many_headers_get_431(server: ServiceProcess) -> None:
    headers = b"".join(b"X-%d: y\r\n" % i for i in range(50))
    with server.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
        status, body, _ = problem_of(read_all(sock))
    assert status == 431 and "UNET_MAX_HEADER_COUNT" in str(body["detail"])


def test_a_slowloris_head_gets_408_within_the_head_timeout(server: ServiceProcess) -> None:
    started = time.monotonic()
    with server.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        try:
            for _ in range(30):  # a header byte every 0.2 s: 6 s if nothing stops it
                sock.sendall(b"X")
                time.sleep(0.2)
        except OSError:
            pass
        response = read_all(sock)
    status, body, _ = problem_of(response)
    assert status == 408 and "UNET_HEAD_TIMEOUT_S" in str(body["detail"])
    assert time.monotonic() - started < 4


def test_a_silent_connection_is_closed_after_the_head_timeout(server: ServiceProcess) -> None:
    started = time.monotonic()
    with server.connect() as sock:
        status, _, _ = problem_of(read_all(sock))
    assert status == 408 and time.monotonic() - started < 4


def test_a_stalled_body_gets_408_within_the_body_timeout(server: ServiceProcess) -> None:
    boundary = b"b0undary"
    part = (
        b"--" + boundary + b'\r\nContent-Disposition: form-data; name="image"; '
        b'filename="x.png"\r\nContent-Type: image/png\r\n\r\n\x89PNG'
    )
    head = (
        b"POST /v1/models/" + TINY_MODEL.encode() + b"/mask HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: multipart/form-data; boundary=" + boundary + b"\r\n"
        b"Content-Length: 100000\r\n\r\n"
    )
    started = time.monotonic()
    with server.connect() as sock:
        sock.sendall(head + part)  # ... and then nothing more
        status, body, _ = problem_of(read_all(sock))
    assert status == 408 and "UNET_BODY_TIMEOUT_S" in str(body["detail"])
    assert time.monotonic() - started < 5


def test_connections_over_the_cap_get_503_at_once(server: ServiceProcess) -> None:
    held = [server.connect() for _ in range(int(LIMITS["UNET_MAX_CONNECTIONS"]))]
    try:
        with server.connect() as extra:
            status, body, head = problem_of(read_all(extra))
        assert status == 503 and "UNET_MAX_CONNECTIONS" in str(body["detail"])
        assert b"retry-after: 1" in head.lower()
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 5  # the server notices the closed ones and serves again
    while httpx.get(f"{server.base}/healthz", timeout=5).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_a_mutation_without_the_key_gets_401_before_its_body_is_sent(
    server: ServiceProcess,
) -> None:
    head = (
        b"POST /v1/models/" + TINY_MODEL.encode() + b"/calibrations HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: multipart/form-data; boundary=b0undary\r\n"
        b"Content-Length: " + str(300 * MiB).encode() + b"\r\n\r\n"
    )
    started = time.monotonic()
    with server.connect() as sock:
        sock.sendall(head)  # none of the 300 MiB body
        status, body, raw_head = problem_of(read_all(sock))
    assert status == 401 and body["title"] == "Unauthorized"
    assert b"www-authenticate: bearer" in raw_head.lower()
    assert time.monotonic() - started < 5
    # With the key, the same head is let through: the server waits for the body instead.
    with server.connect() as sock:
        sock.sendall(
            head.replace(b"Host: x\r\n", f"Host: x\r\nAuthorization: Bearer {KEY}\r\n".encode())
        )
        status, _, _ = problem_of(read_all(sock))
    assert status == 408  # the body timeout, not a 401


def test_refusing_decode_amplifying_images_keeps_the_server_small(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A 0.7 MB zip holding a 9000 x 9000 float64 TIFF (2.5 GiB as RGBA) costs < 100 MiB."""
    running = ServiceProcess(tiny_model_dir, tmp_path / "state", QUIET)  # default limits
    try:
        idle = running.memory_kib()
        for samples in (1, 4):
            image = tiff_bomb(9000, 9000, samples, "float64")
            started = httpx.post(
                f"{running.base}/v1/models/{TINY_MODEL}/calibrations",
                files={"dataset": ("bomb.zip", dataset_zip("bomb.tif", image), "application/zip")},
                timeout=60,
            )
            assert started.status_code == 413, started.text
            uploaded = httpx.post(
                f"{running.base}/v1/models/{TINY_MODEL}/mask",
                files={"image": ("bomb.tif", image)},
                timeout=60,
            )
            assert uploaded.status_code == 413, uploaded.text
        after = running.memory_kib()
    finally:
        running.stop()
    grown_mib = (after["VmHWM"] - idle["VmHWM"]) / 1024
    print(json.dumps({"idle_kib": idle, "after_kib": after, "peak_growth_mib": grown_mib}))
    assert grown_mib < 100

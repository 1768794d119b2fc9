"""Slow bodies, unread answers and one client's share of the connections, on a real server.

Every probe is a raw socket against a real `python -m service`, bounded in time: a limit that
does not hold fails the test instead of hanging it.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import httpx
import numpy as np
import pytest

from service.api.pacing import BodyClock, BodyPacing
from service.api.server import ConnectionLimits, networks
from tests.helpers import TINY_MODEL, png
from tests.servers import ServiceProcess

QUIET = {"UNET_TILE_SIZE": "64", "UNET_LOG_LEVEL": "warning"}
PACED = {
    **QUIET,
    "UNET_BODY_TIMEOUT_S": "10",
    "UNET_BODY_GRACE_S": "2",
    "UNET_BODY_MIN_BYTES_PER_S": "2000",
    "UNET_BODY_DEADLINE_S": "4",
    "UNET_MAX_CONNECTIONS_PER_CLIENT": "3",
    "UNET_UNLIMITED_CLIENTS": "",
    "UNET_TRUSTED_PROXIES": "127.0.0.3",
}
BOUNDARY = b"b0undary"
READY_S = 180  # starting takes over 30 s while the machine is shared and busy


def upload_head(length: int, path: str = f"/v1/models/{TINY_MODEL}/mask") -> bytes:
    """A multipart upload's request head and the start of its one file part."""
    return (
        b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: multipart/form-data; boundary=" + BOUNDARY + b"\r\n"
        b"Content-Length: " + str(length).encode() + b"\r\n\r\n"
        b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="image"; '
        b'filename="x.png"\r\nContent-Type: image/png\r\n\r\n\x89PNG'
    )


def answer(sock: socket.socket) -> tuple[int, dict[str, object]]:
    """(status, problem) of the problem the server sends before it closes the connection."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass  # it hung up on what we were still sending; the answer came first
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    assert b"application/problem+json" in head.lower(), head
    return int(head.split(b" ", 2)[1]), json.loads(body)


def trickle(sock: socket.socket, piece: bytes, every_s: float, most: int) -> None:
    """Send `piece` every `every_s` seconds, `most` times, until the server hangs up."""
    for _ in range(most):
        try:
            sock.sendall(piece)
        except OSError:
            return  # reset or broken pipe: the server gave up on us
        time.sleep(every_s)  # the client's pace, not a wait for the server


@pytest.fixture(scope="module")
def server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """The service with a quick body grace and deadline and a per-client share of 3."""
    running = ServiceProcess(
        tiny_model_dir, tmp_path_factory.mktemp("state"), PACED, ready_within_s=READY_S
    )
    yield running
    running.stop()


def test_a_body_below_the_least_rate_gets_408_after_the_grace(server: ServiceProcess) -> None:
    started = time.monotonic()
    with server.connect() as sock:
        sock.sendall(upload_head(100_000))
        trickle(sock, b"a" * 100, 0.2, 40)  # 500 bytes/s against 2000: 8 s if nothing stops it
        status, problem = answer(sock)
    assert status == 408 and "UNET_BODY_MIN_BYTES_PER_S" in str(problem["detail"])
    assert problem["type"] == "https://unet-service.dev/problems/body-too-slow"
    # The grace (2 s) plus what 500 bytes/s earns: 2 + t/4 = t at t = 2.7 s.
    assert time.monotonic() - started < 4.5


def test_a_body_fast_enough_but_too_long_gets_408_at_the_deadline(
    server: ServiceProcess,
) -> None:
    started = time.monotonic()
    with server.connect() as sock:
        sock.sendall(upload_head(1_000_000))
        trickle(sock, b"a" * 2000, 0.5, 20)  # 4000 bytes/s: fast enough, but 10 s long
        status, problem = answer(sock)
    assert status == 408 and "UNET_BODY_DEADLINE_S" in str(problem["detail"])
    assert 4 <= time.monotonic() - started < 6


def test_a_body_the_answer_did_not_need_is_not_waited_for(server: ServiceProcess) -> None:
    started = time.monotonic()
    with server.connect() as sock:
        sock.sendall(b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nab")
        trickle(sock, b"a", 0.2, 50)  # 10 s if the server kept reading
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
    assert b"".join(chunks).startswith(b"HTTP/1.1 405")
    assert time.monotonic() - started < 3


def test_one_address_gets_its_share_and_others_still_connect(server: ServiceProcess) -> None:
    held = [server.connect() for _ in range(3)]
    try:
        with server.connect() as extra:
            status, problem = answer(extra)
        assert status == 429 and "UNET_MAX_CONNECTIONS_PER_CLIENT" in str(problem["detail"])
        # Another address is not held to 127.0.0.1's share.
        other = socket.create_connection(
            ("127.0.0.1", server.port), timeout=10, source_address=("127.0.0.2", 0)
        )
        with other:
            other.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert other.recv(65536).startswith(b"HTTP/1.1 200")
    finally:
        for sock in held:
            sock.close()


def test_behind_a_trusted_proxy_the_forwarded_client_has_the_share(
    server: ServiceProcess,
) -> None:
    """127.0.0.3 is a trusted proxy here; 127.0.0.2 is not, so its X-Forwarded-For is ignored."""

    def open_request(forwarded_for: str, source: str = "127.0.0.3") -> socket.socket:
        sock = socket.create_connection(
            ("127.0.0.1", server.port), timeout=10, source_address=(source, 0)
        )
        head = upload_head(100_000).replace(
            b"Host: x\r\n", f"Host: x\r\nX-Forwarded-For: {forwarded_for}\r\n".encode()
        )
        sock.sendall(head)  # a request in flight: its body is still to come
        return sock

    held = [open_request("203.0.113.7") for _ in range(3)]
    try:
        with open_request("198.51.100.1, 203.0.113.7") as fourth:
            status, problem = answer(fourth)
        assert status == 429, problem
        # Another forwarded client, and a proxy nobody trusts, are not 203.0.113.7.
        others = [open_request("198.51.100.1"), open_request("203.0.113.7", "127.0.0.2")]
        for sock in others:
            with sock:
                status, problem = answer(sock)  # the body never comes: the grace runs out
                assert status == 408, problem
    finally:
        for sock in held:
            sock.close()


def test_the_least_rate_counts_only_time_spent_waiting() -> None:
    clock = BodyClock(BodyPacing(stall_s=30, deadline_s=300, grace_s=5, min_bytes_per_s=1000))
    assert clock.allowance() == pytest.approx((5, "rate"), abs=0.01)
    clock.note(waited_s=4, size=3000)  # 3 more seconds earned, 4 spent
    assert clock.allowance() == pytest.approx((4, "rate"), abs=0.01)
    clock.note(waited_s=1, size=100_000)
    assert clock.allowance() == pytest.approx((30, "stall"), abs=0.01)


def test_forwarded_for_is_read_only_from_trusted_proxies() -> None:
    limits = ConnectionLimits(
        1, 1, 1, 1, max_per_client=2, trusted_proxies=networks(["10.0.0.0/8"])
    )
    chain = b"198.51.100.1, 203.0.113.7, 10.1.2.3"
    assert limits.forwarded_client("10.0.0.1", chain) == "203.0.113.7"
    assert limits.forwarded_client("192.0.2.1", chain) == "192.0.2.1"
    assert limits.forwarded_client("10.0.0.1", b"not-an-address") == "not-an-address"
    assert limits.forwarded_client("10.0.0.1", None) == "10.0.0.1"
    assert not limits.shared("10.0.0.1") and limits.shared("203.0.113.7")


def _mask_statuses(base: str, image: bytes, until: float) -> list[tuple[float, int]]:
    """(time, status) of one `/mask` after another, each on a new connection, until `until`."""
    seen = []
    while time.monotonic() < until:
        try:
            response = httpx.post(
                f"{base}/v1/models/{TINY_MODEL}/mask",
                files={"image": ("x.png", image, "image/png")},
                timeout=5,
            )
            status = response.status_code
        except httpx.TransportError:
            status = 0
        seen.append((time.monotonic(), status))
        time.sleep(0.1)  # a client's pace: ten a second at most
    return seen


@pytest.mark.slow
def test_trickling_uploads_from_every_slot_are_cut_off_and_masks_come_back(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """260 uploads trickling a byte every 5 s fill the 256 slots; within 25 s /mask is 200 again.

    All from 127.0.0.1, which the per-client share leaves alone: the least rate frees the slots.
    """
    # Default limits.
    running = ServiceProcess(tiny_model_dir, tmp_path / "state", QUIET, ready_within_s=READY_S)
    image = png_image(64)
    slow: list[socket.socket] = []
    try:
        started = time.monotonic()
        for _ in range(260):
            sock = running.connect()
            with contextlib.suppress(OSError):  # one over the cap may already be closed
                sock.sendall(upload_head(100_000))
            slow.append(sock)
        results: list[list[tuple[float, int]]] = []
        masks = threading.Thread(
            target=lambda: results.append(_mask_statuses(running.base, image, started + 40))
        )
        masks.start()
        while masks.is_alive():  # a byte every 5 s on every slow upload, until the end
            for sock in slow:
                with contextlib.suppress(OSError):
                    sock.send(b"a")
            masks.join(timeout=5)
        seen = results[0]
        first_ok = next((at for at, status in seen if status == 200), None)
        assert first_ok is not None and first_ok - started < 25, seen[:20]
        following = [status for at, status in seen if first_ok <= at < first_ok + 15]
        assert sum(s == 200 for s in following) >= 0.9 * len(following), following
        statuses = []
        for sock in slow:
            sock.settimeout(1)
            with contextlib.suppress(OSError, ValueError, IndexError):
                statuses.append(answer(sock)[0])
        assert statuses.count(408) >= 250, statuses
        print(json.dumps({"first_200_s": round(first_ok - started, 1), "slow_got": statuses}))
    finally:
        for sock in slow:
            sock.close()
        running.stop()


@pytest.mark.slow
def test_unread_probability_maps_are_dropped_and_their_memory_freed(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """8 clients ask for a 2048 px map (16 MiB of float32) and never read it."""
    log = (tmp_path / "service.log").open("w+")
    send_timeout_s = 3
    env = {
        "UNET_LOG_LEVEL": "warning",
        "UNET_SEND_TIMEOUT_S": str(send_timeout_s),
        "UNET_REQUEST_TIMEOUT_S": "900",  # on a busy machine 8 maps take minutes in turn
    }
    running = ServiceProcess(
        tiny_model_dir, tmp_path / "state", env, stderr=log, ready_within_s=READY_S
    )
    image = png_image(2048)
    url = f"/v1/models/{TINY_MODEL}/probabilities"
    try:
        # The same 8 maps read in full set the baseline: it holds what inference itself keeps
        # (the allocator keeps freed arenas), so what is left over is the unread answers' share.
        sizes: list[tuple[int, int]] = []

        def read_one() -> None:
            read = httpx.post(
                f"{running.base}{url}", files={"image": ("x.png", image)}, timeout=900
            )
            sizes.append((read.status_code, len(read.content)))

        readers = [threading.Thread(target=read_one) for _ in range(8)]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join()
        assert all(status == 200 and size > 16 * 2**20 for status, size in sizes), sizes
        assert len(sizes) == 8
        baseline = running.memory_kib()
        clients = []
        for _ in range(8):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(10)
            sock.connect(("127.0.0.1", running.port))
            sock.sendall(multipart_request(url, image))
            clients.append(sock)
        # Each answer is dropped send_timeout_s after it stalls; the model makes them in turn.
        deadline = time.monotonic() + 8 * 60
        while (dropped := _lines_with(log, "UNET_SEND_TIMEOUT_S")) < 8:
            assert time.monotonic() < deadline, f"{dropped} of 8 dropped"
            time.sleep(0.5)
        after = running.memory_kib()
        for sock in clients:  # what reaches a client now is a reset, long before 16 MiB
            received = 0
            with contextlib.suppress(OSError):
                while chunk := sock.recv(1 << 20):
                    received += len(chunk)
            assert received < 16 * 2**20
            sock.close()
        stopping = time.monotonic()
        running.stop()
        stop_s = time.monotonic() - stopping
    finally:
        if running.process.poll() is None:
            running.stop()
        log.close()
    grown_mib = (after["VmRSS"] - baseline["VmRSS"]) / 1024
    print(json.dumps({"baseline_kib": baseline, "after_kib": after, "stop_s": stop_s}))
    assert grown_mib < 200 and stop_s < 10


def _lines_with(log: IO[str], text: str) -> int:
    log.seek(0)
    return sum(text in line for line in log.read().splitlines())


def png_image(side: int) -> bytes:
    """A smooth `side` x `side` RGB image as PNG (small to send, large to answer)."""
    y, x = np.mgrid[0:side, 0:side]
    grey = ((np.sin(x / 50) * np.cos(y / 70) + 1) * 127).astype(np.uint8)
    return png(np.stack([grey] * 3, axis=-1))


def multipart_request(path: str, image: bytes) -> bytes:
    """A whole POST of `image` as the multipart field `image`, keep-alive."""
    body = (
        b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="image"; '
        b'filename="x.png"\r\nContent-Type: image/png\r\n\r\n'
        + image
        + b"\r\n--"
        + BOUNDARY
        + b"--\r\n"
    )
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY.decode()}\r\n\r\n"
    )
    return head.encode() + body

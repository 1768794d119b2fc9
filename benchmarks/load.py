"""Load on a running service: keep-alive clients posting masks, and the engine's own view.

The clients share the cores with the server on a small machine, so they are a few lines of
asyncio on pre-encoded requests rather than a full HTTP client: every cycle they spend is not
the server's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

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
    """One keep-alive HTTP/1.1 connection for pre-encoded requests."""

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

"""Real `python -m service` processes on 127.0.0.1, for benchmarks and tests alike.

A free loopback port, waiting for `/readyz`, and the process's memory figures from /proc;
`tests/servers.py` wraps the same pieces for tests.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

READY_WITHIN_S = 300.0


def log(message: str) -> None:
    """Progress on stderr; a benchmark's stdout carries only its JSON result."""
    print(message, file=sys.stderr, flush=True)


class NotReady(RuntimeError):
    """The service exited while starting, or was not ready in time; the message says which."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def memory_kib(pid: int) -> dict[str, int]:
    """Process `pid`'s VmRSS and VmHWM (peak resident) in KiB, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def memory_mb(pid: int, field: str = "VmHWM") -> float | None:
    """A memory figure of process `pid` (VmHWM: peak resident, VmRSS: now) in MiB; None if gone."""
    try:
        return memory_kib(pid)[field] / 1024
    except (OSError, KeyError):
        return None


def wait_ready(
    url: str,
    process: subprocess.Popen[bytes] | subprocess.Popen[str],
    within_s: float,
    said: Callable[[], str] = lambda: "",
    path: str = "/readyz",
) -> None:
    """Poll `url` + `path` until it answers 200; NotReady (with `said()`) if the process exits
    first or `within_s` passes."""
    deadline = time.monotonic() + within_s
    while True:
        if process.poll() is not None:
            raise NotReady(f"the service exited ({process.returncode}) while starting: {said()}")
        try:
            if httpx.get(f"{url}{path}", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise NotReady(f"the service was not ready within {within_s} s: {said()}")
        time.sleep(0.1)


def service_env(port: int, env: dict[str, str], source: Path | None = None) -> dict[str, str]:
    """The environment of a service on 127.0.0.1:`port`: this one's, then `env`; with
    `source`, that source tree is imported first (after any PYTHONPATH `env` gives)."""
    full = {**os.environ, **env, "UNET_HOST": "127.0.0.1", "UNET_PORT": str(port)}
    if source is not None:
        full["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(source)) if p)
    return full


@contextmanager
def server(
    env: dict[str, str],
    workdir: Path,
    source: Path | None = None,
    ready_within_s: float = READY_WITHIN_S,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A service subprocess on 127.0.0.1, its output in `workdir`; yields (base URL, process)
    once ready, and stops it after the `with` block. `source`: run that source tree's code."""
    port = free_port()
    log_path = workdir / f"server-{port}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "service"],
            env=service_env(port, env, source),
            cwd=source,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url, process, ready_within_s, log_path.read_text)
            yield url, process
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)

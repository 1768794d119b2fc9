"""Real `python -m service` processes on 127.0.0.1, for tests that need a real socket."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import httpx

READY_WITHIN_S = 60.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServiceProcess:
    """`python -m service` as a child process on a free 127.0.0.1 port, waited on until ready."""

    def __init__(
        self,
        model_dir: Path,
        state_dir: Path,
        env: dict[str, str] | None = None,
        stderr: int | IO[str] | IO[bytes] = subprocess.DEVNULL,
        ready_within_s: float = READY_WITHIN_S,
    ) -> None:
        self.port = free_port()
        self.env = {
            **os.environ,
            "UNET_MODEL_DIR": str(model_dir),
            "UNET_STATE_DIR": str(state_dir),
            "UNET_HOST": "127.0.0.1",
            "UNET_PORT": str(self.port),
            **(env or {}),
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service"],
            env=self.env,
            stderr=stderr,
            text=True,
        )
        self.base = f"http://127.0.0.1:{self.port}"
        try:
            self._wait_ready(ready_within_s)
        except BaseException:
            self.process.kill()  # a service that failed to start must not outlive the test
            self.process.wait(timeout=30)
            raise

    def _wait_ready(self, within_s: float) -> None:
        deadline = time.monotonic() + within_s
        while True:
            if self.process.poll() is not None:
                said = self.process.stderr.read() if self.process.stderr else ""
                raise AssertionError(f"the service exited while starting: {said}")
            try:
                if httpx.get(f"{self.base}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"service not ready within {within_s} s"
            time.sleep(0.1)

    def memory_kib(self) -> dict[str, int]:
        """The process's VmRSS and VmHWM (peak RSS) in KiB, from /proc."""
        fields = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0])
        return fields

    def connect(self) -> socket.socket:
        """A raw TCP connection with a 10 s limit on every call."""
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)

    def stop(self) -> str:
        """Terminate the process, wait for it, and return what it wrote on a piped stderr."""
        self.process.terminate()
        _, said = self.process.communicate(timeout=30)
        return said or ""


@contextmanager
def running_service(
    model_dir: Path, state_dir: Path, env: dict[str, str] | None = None
) -> Iterator[ServiceProcess]:
    """A ready `ServiceProcess` for the `with` block, stopped after it."""
    service = ServiceProcess(model_dir, state_dir, env)
    try:
        yield service
    finally:
        service.stop()

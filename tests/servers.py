"""Real `python -m service` processes on 127.0.0.1, for tests that need a real socket.

The pieces (free port, waiting for `/readyz`, memory figures) are `benchmarks.launch`'s, shared
with the benchmarks.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from benchmarks.launch import NotReady, free_port, memory_kib, service_env, wait_ready

__all__ = ["READY_WITHIN_S", "ServiceProcess", "free_port", "running_service"]

READY_WITHIN_S = 60.0


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
        self.env = service_env(
            self.port, {"UNET_MODEL_DIR": str(model_dir), "UNET_STATE_DIR": str(state_dir)}
        )
        self.env.update(env or {})
        # Asked for a pipe, the server writes to a file instead: a pipe nobody reads until the
        # end fills up (64 KiB of log lines) and then blocks the server mid-request.
        self._log = tempfile.TemporaryFile("w+") if stderr == subprocess.PIPE else None  # noqa: SIM115  (closed by stop)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service"],
            env=self.env,
            stderr=self._log or stderr,
            text=True,
        )
        self.base = f"http://127.0.0.1:{self.port}"
        try:
            wait_ready(self.base, self.process, ready_within_s, self._said)
        except BaseException as error:
            # A server that never became ready must not outlive the test that started it.
            self.process.kill()
            self.process.wait(timeout=30)
            if isinstance(error, NotReady):
                raise AssertionError(str(error)) from None
            raise

    def _said(self) -> str:
        """What the server wrote to stderr so far, when it was asked for (stderr=PIPE)."""
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read()

    def memory_kib(self) -> dict[str, int]:
        """The process's VmRSS and VmHWM (peak RSS) in KiB, from /proc."""
        return memory_kib(self.process.pid)

    def connect(self) -> socket.socket:
        """A raw TCP connection with a 10 s limit on every call."""
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)

    def stop(self) -> str:
        """Terminate the process, wait for it, and return what it wrote on a piped stderr."""
        self.process.terminate()
        self.process.wait(timeout=30)
        said = self._said()
        if self._log is not None:
            self._log.close()
        return said


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


def worker_pids(pid: int) -> list[int]:
    """The worker processes uvicorn spawned directly under `pid`."""
    listed = subprocess.run(
        ["ps", "--ppid", str(pid), "-o", "pid="], capture_output=True, text=True
    ).stdout.split()
    return [
        int(child)
        for child in listed
        if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()
    ]

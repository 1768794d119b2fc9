"""Many processes, one truth: real service processes sharing SQLite or PostgreSQL.

Each process is `python -m service` on its own port, as it runs in production; they share the
state folder (SQLite) or a database (PostgreSQL, each with its own state folder, like replicas
on separate machines).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
import pytest

from tests.helpers import TINY_MODEL, dataset_files, make_zip, png, wait_for_calibration
from tests.servers import ServiceProcess, free_port, worker_pids

BASE = f"/v1/models/{TINY_MODEL}"
LEASE_S = 2.0
IMAGE = png(__import__("numpy").full((32, 32), 128, dtype="uint8"))


@dataclass
class Service:
    """One running `python -m service` process."""

    process: subprocess.Popen[str]
    client: httpx.Client

    def infer_threshold(self) -> float:
        """The threshold this process applies to its next inference (its X-Threshold)."""
        files = {"image": ("i.png", IMAGE, "image/png")}
        response = self.client.post(f"{BASE}/mask", files=files)
        assert response.status_code == 200, response.text
        return float(response.headers["X-Threshold"])

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)


@pytest.fixture(params=["sqlite", "postgresql"])
def spawn(
    request: pytest.FixtureRequest, tiny_model_dir: Path, tmp_path: Path
) -> Iterator[Callable[[], Service]]:
    """Starts service processes sharing one store: a SQLite folder or a PostgreSQL database."""
    shared = {"UNET_CALIBRATION_LEASE_S": str(LEASE_S)}
    if request.param == "postgresql":
        shared["UNET_DATABASE_URL"] = request.getfixturevalue("postgres_url")
    started: list[Service] = []
    logs: list[IO[str]] = []

    def start() -> Service:
        state = tmp_path / (f"state-{len(started)}" if request.param == "postgresql" else "state")
        # A file, not a pipe: nobody reads a pipe while the test runs, and a server whose
        # access lines fill one blocks mid-request.
        log = (tmp_path / f"service-{len(started)}.log").open("w")
        logs.append(log)
        running = ServiceProcess(tiny_model_dir, state, shared, stderr=log, ready_within_s=120)
        service = Service(running.process, httpx.Client(base_url=running.base, timeout=30))
        started.append(service)
        return service

    yield start
    for service in started:
        service.client.close()
        if service.process.poll() is None:
            service.process.terminate()
            service.process.wait(timeout=60)
    for log in logs:
        log.close()


@pytest.mark.slow
def test_a_threshold_set_on_one_process_is_applied_by_the_other_within_a_second(
    spawn: Callable[[], Service],
) -> None:
    first, second = spawn(), spawn()
    assert second.infer_threshold() == 0.5  # the default, now cached in the second process
    for value in (0.25, 0.75, 0.4):
        assert first.client.put(f"{BASE}/threshold", json={"value": value}).status_code == 200
        acknowledged = time.monotonic()
        assert second.infer_threshold() == value or _within(1.0, second, value, acknowledged)


def _within(seconds: float, service: Service, value: float, since: float) -> bool:
    """Whether `service` applies `value` before `seconds` have passed since `since`."""
    while time.monotonic() - since < seconds:
        if service.infer_threshold() == value:
            return True
    return False


@pytest.mark.slow
def test_alternating_writes_with_a_kill_lose_no_acknowledged_value(
    spawn: Callable[[], Service],
) -> None:
    services = [spawn(), spawn()]
    victim = random.randrange(2)
    kill_at = random.randrange(20, 180)
    acknowledged: list[float] = []
    for i in range(200):
        if i == kill_at:
            services[victim].kill()
        value = round(0.001 + i * 0.004, 6)
        try:
            response = services[i % 2].client.put(f"{BASE}/threshold", json={"value": value})
        except httpx.TransportError:
            continue  # the killed process: not acknowledged
        if response.status_code == 200:
            acknowledged.append(value)
    survivor = services[1 - victim]
    # Every PUT before the kill, and the survivor's after it.
    assert len(acknowledged) >= kill_at + (200 - kill_at) // 2
    history = survivor.client.get(f"{BASE}/threshold/history?limit=1000").json()["changes"]
    stored = [change["value"] for change in reversed(history)]
    assert [v for v in stored if v in acknowledged] == acknowledged  # all there, in order
    assert survivor.client.get(f"{BASE}/threshold").json()["value"] == acknowledged[-1]
    assert survivor.infer_threshold() == acknowledged[-1]


@pytest.mark.slow
def test_a_killed_calibration_fails_within_the_lease_and_the_old_threshold_stays(
    spawn: Callable[[], Service],
) -> None:
    runner, watcher = spawn(), spawn()
    assert runner.client.put(f"{BASE}/threshold", json={"value": 0.3}).status_code == 200
    data = make_zip(dataset_files(300, 96))
    files = {"dataset": ("calibration.zip", data, "application/zip")}
    response = runner.client.post(f"{BASE}/calibrations", files=files, data={"strategy": "f1"})
    assert response.status_code == 202, response.text
    job = f"{BASE}/calibrations/{response.json()['id']}"
    wait_for_calibration(lambda: watcher.client.get(job).json(), ("running",))
    runner.kill()
    killed = time.monotonic()

    while (record := watcher.client.get(job).json())["status"] == "running":
        # The lease, plus one renewal period for the watcher's sweep to come round.
        assert time.monotonic() - killed < LEASE_S * 4 / 3 + 1, "still running after its lease"
        time.sleep(0.05)
    assert record["status"] == "failed"
    assert "stopped" in record["error"] and "start it again" in record["error"]
    assert watcher.infer_threshold() == 0.3
    threshold = watcher.client.get(f"{BASE}/threshold").json()
    assert (threshold["value"], threshold["source"]) == (0.3, "manual")


@pytest.mark.slow
def test_unet_serve_workers_runs_processes_on_one_port_that_agree(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "UNET_MODEL_DIR": str(tiny_model_dir),
        "UNET_STATE_DIR": str(tmp_path / "state"),
    }
    command = [sys.executable, "-m", "service.cli", "serve", "--workers", "2", "--port", str(port)]
    log = (tmp_path / "serve.log").open("w")  # a file: an unread pipe would fill and block
    process = subprocess.Popen(command, env=env, stderr=log, text=True)
    service = Service(process, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30))
    try:
        deadline = time.monotonic() + 120
        while len(worker_pids(process.pid)) < 2 or not _ready_on_fresh_connections(port):
            assert process.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "two workers not ready within 120 s"
            time.sleep(0.2)
        assert len(worker_pids(process.pid)) == 2
        assert service.client.put(f"{BASE}/threshold", json={"value": 0.65}).status_code == 200
        time.sleep(1.0)  # the coherence bound
        # Fresh connections land on either worker: every one applies the new threshold.
        for _ in range(10):
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as fresh:
                assert Service(process, fresh).infer_threshold() == 0.65
    finally:
        service.client.close()
        process.terminate()
        process.wait(timeout=60)
        log.close()


def _ready_on_fresh_connections(port: int) -> bool:
    try:
        return all(
            httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
            for _ in range(6)
        )
    except httpx.TransportError:
        return False

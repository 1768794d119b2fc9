"""A real `python -m service` on a state folder whose disk fills up, or that is read-only.

The folder is a small tmpfs of its own, so filling it fills nothing else; mounting one needs
root, and the tests are skipped where that is not allowed.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from model.data.synth import generate_pair, pair_rng
from tests.helpers import (
    ENDED,
    TINY_MODEL,
    dataset_files,
    fill,
    make_zip,
    mounted_tmpfs,
    png,
    wait_for_calibration,
)
from tests.servers import ServiceProcess

KEY = "s3cret"
AUTH = {"Authorization": f"Bearer {KEY}"}
MODEL = f"/v1/models/{TINY_MODEL}"
ENV = {"UNET_API_KEY": KEY, "UNET_LOG_LEVEL": "warning", "UNET_TILE_SIZE": "64"}


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """An empty 16 MiB tmpfs, unmounted afterwards."""
    with mounted_tmpfs(tmp_path / "tmpfs", 16) as mount:
        yield mount


def image() -> bytes:
    """A 64 x 64 synthetic image as PNG."""
    return png(generate_pair(pair_rng(5, 0), 64)[0])


def mask(base: str) -> httpx.Response:
    """A mask of `image()` from the service at `base`."""
    files = {"image": ("x.png", image(), "image/png")}
    return httpx.post(f"{base}{MODEL}/mask", files=files, timeout=30)


def calibrate(base: str, dataset: bytes) -> httpx.Response:
    """Start a calibration of `dataset` (a zip)."""
    files = {"dataset": ("d.zip", dataset, "application/zip")}
    return httpx.post(f"{base}{MODEL}/calibrations", files=files, headers=AUTH, timeout=60)


def set_threshold(base: str, value: float) -> httpx.Response:
    """PUT the threshold."""
    return httpx.put(f"{base}{MODEL}/threshold", json={"value": value}, headers=AUTH, timeout=30)


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """The problem body of `response`, which must have `status`."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    return body


def job_status(base: str, location: str) -> dict[str, Any]:
    """The calibration at `location`."""
    job: dict[str, Any] = httpx.get(f"{base}{location}", timeout=30).json()
    return job


def test_a_full_disk_answers_507_fails_the_running_job_and_keeps_inference(
    tiny_model_dir: Path, tmpfs: Path
) -> None:
    server = ServiceProcess(tiny_model_dir, tmpfs / "state", ENV)
    try:
        base = server.base
        # Long enough that it is still running when the disk fills.
        started = calibrate(base, make_zip(dataset_files(n=150, size=192)))
        assert started.status_code == 202, started.text
        location = started.headers["location"].removeprefix(base)
        wait_for_calibration(lambda: job_status(base, location), ("running", *ENDED))
        fillers = [fill(tmpfs, "filler-1")]

        # The job meets the full disk, gives its data set's space back and records its failure.
        job = wait_for_calibration(lambda: job_status(base, location))
        assert job["status"] == "failed", "the calibration finished before the disk filled"
        assert "UNET_STATE_DIR" in job["error"] and "full" in job["error"], job["error"]

        fillers.append(fill(tmpfs, "filler-2"))  # the space the job gave back
        refused = problem(set_threshold(base, 0.3), 507)
        assert refused["type"].endswith("/state-disk-full")
        assert "full" in refused["detail"] and "UNET_STATE_DIR" in refused["detail"]
        problem(calibrate(base, make_zip(dataset_files(n=2))), 507)
        assert mask(base).status_code == 200
        assert httpx.get(f"{base}/readyz", timeout=5).status_code == 200

        for filler in fillers:
            filler.unlink()
        assert set_threshold(base, 0.3).status_code == 200
        again = calibrate(base, make_zip(dataset_files(n=2)))
        assert again.status_code == 202, again.text
        location = again.headers["location"].removeprefix(base)
        done = wait_for_calibration(lambda: job_status(base, location))
        assert done["status"] == "succeeded" and done["error"] is None
    finally:
        server.stop()


def test_a_read_only_state_folder_serves_inference_and_refuses_changes(
    tiny_model_dir: Path, tmpfs: Path
) -> None:
    writable = ServiceProcess(tiny_model_dir, tmpfs / "state", ENV)
    try:
        assert set_threshold(writable.base, 0.3).status_code == 200
    finally:
        writable.stop()
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)

    # The threshold stored before comes back; a folder never written gives the defaults.
    log = tmpfs.parent / "service.log"
    for folder, source, value in (
        (tmpfs / "state", "manual", 0.3),
        (tmpfs / "new", "default", None),
    ):
        with log.open("wb") as stderr:
            server = ServiceProcess(tiny_model_dir, folder, ENV, stderr)
        try:
            base = server.base
            ready = httpx.get(f"{base}/readyz", timeout=5)
            assert ready.status_code == 200
            assert ready.json()["state"].startswith("read-only: "), ready.json()
            threshold = httpx.get(f"{base}{MODEL}/threshold", timeout=5).json()
            assert threshold["source"] == source
            assert value is None or threshold["value"] == value
            assert mask(base).status_code == 200

            refusals = [
                set_threshold(base, 0.4),
                httpx.delete(f"{base}{MODEL}/threshold", headers=AUTH, timeout=30),
                calibrate(base, make_zip(dataset_files(n=2))),
            ]
            for refused in refusals:
                body = problem(refused, 503)
                assert body["type"].endswith("/state-read-only")
                assert "read-only" in body["detail"] and "UNET_STATE_DIR" in body["detail"]
            assert httpx.get(f"{base}{MODEL}/threshold", timeout=5).json()["source"] == source
        finally:
            server.stop()
        said = log.read_text()
        assert said.count("serving inference with the stored thresholds") == 1, said

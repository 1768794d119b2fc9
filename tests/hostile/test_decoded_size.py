"""Issue 22: compressed data inside images cannot make a real server spend memory.

A 1 MB TIFF of 1024 x 1024 bytes whose one deflate strip inflates to 1 GiB used to pass the header
check and cost gigabytes; three of them in a 10 KB calibration zip slipped past the zip's own
expansion limit. Now each answers 422 naming the strip, and the server's peak RSS (VmHWM) barely
moves, for one upload at a time and for several at once.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.hostile.make_corpus import GiB, inflating_zip, tiff_inflating
from tests.servers import ServiceProcess

pytestmark = pytest.mark.slow  # starts a server on the shipped checkpoints
MODEL = "/v1/models/unet-sigmoid"
MiB = 1 << 20


def test_inflating_strips_are_refused_without_spending_memory(
    shipped_weights: Path, tmp_path: Path
) -> None:
    strip, tiles = tiff_inflating(1024, GiB), tiff_inflating(1024, GiB, tile=256)
    three = inflating_zip(3)
    running = ServiceProcess(shipped_weights, tmp_path / "state", {"UNET_LOG_LEVEL": "warning"})
    try:
        idle = running.memory_kib()

        def mask(image: bytes) -> httpx.Response:
            files = {"image": ("bomb.tif", image, "image/tiff")}
            return httpx.post(f"{running.base}{MODEL}/mask", files=files, timeout=60)

        answers = [mask(strip), mask(tiles)]
        answers.append(
            httpx.post(
                f"{running.base}{MODEL}/calibrations",
                files={"dataset": ("three.zip", three, "application/zip")},
                timeout=60,
            )
        )
        with ThreadPoolExecutor(4) as pool:  # a few at once: each holds one 1 MiB piece
            answers += pool.map(mask, [strip, tiles] * 2)
        after = running.memory_kib()
    finally:
        running.stop()
    for answer in answers:
        assert answer.status_code == 422, answer.text
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert "inflates to more than the" in answer.json()["detail"], answer.text
    assert "images/bomb0.tif: strip 0" in answers[2].json()["detail"]
    grown_mib = (after["VmHWM"] - idle["VmHWM"]) / 1024
    print(json.dumps({"idle_kib": idle, "after_kib": after, "peak_growth_mib": grown_mib}))
    assert grown_mib < 100  # before: 2 GiB per strip, and 3 GiB for the zip's job

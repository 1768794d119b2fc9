"""Issue 22: compressed data inside images cannot make a real server spend memory.

A 1 MB TIFF of 1024 x 1024 bytes whose one deflate strip inflates to 1 GiB used to pass the header
check and cost gigabytes; three of them in a 10 KB calibration zip slipped past the zip's own
expansion limit. Now each answers 422 naming the strip, and the server's peak RSS (VmHWM) barely
moves, for one upload at a time and for several at once. An LZW strip, which Pillow's libtiff
decodes, is decoded only as far as its declared size.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from model import UNet, UNetConfig, save
from tests.hostile.make_corpus import GiB, inflating_zip, lzw_zeros, tiff_inflating, tiff_segment
from tests.servers import ServiceProcess

pytestmark = pytest.mark.slow  # starts a server
MODEL = "/v1/models/small"


def test_inflating_strips_are_refused_without_spending_memory(tmp_path: Path) -> None:
    strip, tiles = tiff_inflating(1024, GiB), tiff_inflating(1024, GiB, tile=256)
    three = inflating_zip(3)
    lzw = tiff_segment(lzw_zeros(GiB), compression=5, side=256)  # Pillow's libtiff decodes it
    # An untrained network: what is measured is decoding, which happens before any inference.
    save(
        UNet(UNetConfig(depth=2, base_channels=4)).eval(), tmp_path / "models" / "small.safetensors"
    )
    env = {"UNET_LOG_LEVEL": "warning", "UNET_TILE_SIZE": "64"}
    running = ServiceProcess(tmp_path / "models", tmp_path / "state", env, ready_within_s=180)
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
        lzw_answer = mask(lzw)  # libtiff stops at the 64 KiB strip: an image of zeros
        after = running.memory_kib()
    finally:
        running.stop()
    for answer in answers:
        assert answer.status_code == 422, answer.text
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert "inflates to more than the" in answer.json()["detail"], answer.text
    assert "images/bomb0.tif: strip 0" in answers[2].json()["detail"]
    assert lzw_answer.status_code == 200, lzw_answer.text
    grown_mib = (after["VmHWM"] - idle["VmHWM"]) / 1024
    print(json.dumps({"idle_kib": idle, "after_kib": after, "peak_growth_mib": grown_mib}))
    assert grown_mib < 100  # before: 2 GiB per strip, and 3 GiB for the zip's job

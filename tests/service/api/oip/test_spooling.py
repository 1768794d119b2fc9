"""A `/v2` body past 1 MiB spools in UNET_SPOOL_DIR while it arrives, as v1's uploads do: with that
folder's disk full it answers 507 `{"error"}` and logs the folder, and once there is room, 200.

The folder is a small tmpfs of its own, so filling it fills nothing else; mounting one needs root,
and the test is skipped where that is not allowed.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np

from tests.helpers import TINY_MODEL, fill, mounted_tmpfs
from tests.servers import ServiceProcess

ENV = {"UNET_LOG_LEVEL": "warning", "UNET_TILE_SIZE": "64"}
READY_S = 180  # starting takes over 30 s while the machine is shared and busy


def infer(base: str, pixels: np.ndarray) -> httpx.Response:
    """A binary UINT8 v2 request of `pixels` (N, H, W) asking for the mask."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "UINT8",
                    "shape": list(pixels.shape),
                    "parameters": {"binary_data_size": pixels.nbytes},
                }
            ],
            "outputs": [{"name": "mask", "parameters": {"binary_data": True}}],
        }
    ).encode()
    return httpx.post(
        f"{base}/v2/models/{TINY_MODEL}/infer",
        content=header + pixels.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header))},
        timeout=120,
    )


def test_a_full_spool_folder_answers_507_as_the_protocol_says(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    large = np.random.default_rng(0).integers(0, 256, (1, 1100, 1000), dtype=np.uint8)
    assert large.nbytes > 1 << 20  # past what is held in memory while it arrives
    small = large[:, :100, :100].copy()
    with mounted_tmpfs(tmp_path / "tmpfs", 16) as mount:
        spool = mount / "spool"
        log = (tmp_path / "service.log").open("w+")
        server = ServiceProcess(
            tiny_model_dir,
            tmp_path / "state",
            {**ENV, "UNET_SPOOL_DIR": str(spool)},
            stderr=log,
            ready_within_s=READY_S,
        )
        try:
            filler = fill(mount, "filler")
            refused = infer(server.base, large)
            assert refused.status_code == 507, refused.text
            assert refused.headers["content-type"] == "application/json"
            assert "UNET_SPOOL_DIR" in refused.json()["error"]
            assert infer(server.base, small).status_code == 200  # never touches the disk
            filler.unlink()
            answer = infer(server.base, large)
            assert answer.status_code == 200, answer.text
            header = int(answer.headers["inference-header-content-length"])
            assert len(answer.content) - header == large.size  # the whole mask came back
        finally:
            server.stop()
            log.seek(0)
            said = log.read()
            log.close()
    assert said.count(f"the spool folder {spool} is full") == 1, said

"""Real uvicorn processes, as `python -m service` runs them."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from model.data.synth import generate_pair, pair_rng
from tests.servers import ServiceProcess


@pytest.mark.slow
def test_python_m_service_serves_masks_over_a_real_socket(
    shipped_weights: Path, tmp_path: Path
) -> None:
    service = ServiceProcess(shipped_weights, tmp_path / "state", stderr=subprocess.PIPE)
    server, base = service.process, service.base
    try:
        image = generate_pair(pair_rng(4242, 0), 96)[0]
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "PNG")
        response = httpx.post(
            f"{base}/v1/models/unet-sigmoid/mask",
            files={"image": ("cells.png", buffer.getvalue(), "image/png")},
            timeout=30,
        )
        assert response.status_code == 200
        mask = np.asarray(Image.open(io.BytesIO(response.content)))
        assert mask.shape == image.shape and 0 < (mask == 255).mean() < 1
        assert response.headers["x-threshold-source"] == "default"
        # Processes sharing a state folder are tests/service/state/test_scaling.py's subject.
    finally:
        stderr = service.stop()
    # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status tells the truth.
    assert server.returncode in (0, -15)
    assert "Application shutdown complete" in stderr

"""Real uvicorn processes, as `python -m service` runs them."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from model.synth import generate_pair, pair_rng


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_python_m_service_serves_masks_over_a_real_socket(
    shipped_weights: Path, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "UNET_MODEL_DIR": str(shipped_weights),
        "UNET_STATE_DIR": str(tmp_path / "state"),
        "UNET_PORT": str(port),
        "UNET_HOST": "127.0.0.1",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "service"], env=env, stderr=subprocess.PIPE, text=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, server.stderr.read() if server.stderr else ""
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "service not ready within 60 s"
            time.sleep(0.2)
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
        # Processes sharing a state folder are tests/service/test_scaling.py's subject.
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=30)
    # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status tells the truth.
    assert server.returncode in (0, -15)
    assert "Application shutdown complete" in stderr

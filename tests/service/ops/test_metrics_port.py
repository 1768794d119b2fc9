"""UNET_METRICS_PORT: the metrics on a port of their own, as well as on the API's /metrics."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from service.app import create_app
from service.settings import Settings
from tests.helpers import TINY_MODEL
from tests.servers import free_port


def test_the_metrics_port_serves_the_same_registry(tiny_model_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    settings = Settings(
        model_dir=tiny_model_dir, state_dir=tmp_path / "state", api_key=None, metrics_port=port
    )
    with TestClient(create_app(settings)) as client:
        scraped = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert f'unet_model_available{{model="{TINY_MODEL}"}}' in scraped
        assert "process_resident_memory_bytes" in scraped
        assert "unet_build_info" in client.get("/metrics").text
    with pytest.raises(httpx.TransportError):  # closed with the app
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_the_metrics_port_needs_one_worker() -> None:
    with pytest.raises(ValidationError, match="UNET_WORKERS=1"):
        Settings(metrics_port=9100, workers=2)

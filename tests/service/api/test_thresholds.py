"""Threshold endpoints through the real app: override, reset, history, auth and restarts."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from service.app import create_app
from service.settings import Settings
from tests.helpers import TINY_MODEL, dataset_files, make_zip, png, trace_sql, until

BASE = f"/v1/models/{TINY_MODEL}"
KEY = "sesame"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def settings(tmp_path: Path, tiny_model_dir: Path) -> Settings:
    """The tiny model, an API key, and a small tile so that the warm-up is short."""
    return Settings(
        model_dir=tiny_model_dir,
        state_dir=tmp_path / "state",
        api_key=SecretStr(KEY),
        tile_size=64,
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """The app over HTTP, its lifespan running."""
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_async_routes_keep_sqlite_off_the_event_loop(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    statements = trace_sql(monkeypatch)
    with TestClient(create_app(settings)) as client:
        until(lambda: client.get("/readyz").status_code == 200, "service not ready")
        loop_thread = client.portal.call(threading.get_ident)  # type: ignore[union-attr]
        client.put(f"{BASE}/threshold", json={"value": 0.4}, headers=AUTH)  # memory forgets
        statements.clear()
        image = {"image": ("x.png", png(np.zeros((32, 32), np.uint8)), "image/png")}
        assert client.post(f"{BASE}/mask", files=image).headers["X-Threshold"] == "0.4"
        dataset = {"dataset": ("set.zip", make_zip(dataset_files(2)), "application/zip")}
        started = client.post(f"{BASE}/calibrations", files=dataset, headers=AUTH)
        assert started.status_code == 202, started.text
        location = started.headers["location"]
        until(lambda: client.get(location).json()["status"] == "succeeded", "not calibrated")
        on_loop = [sql for thread, sql in statements if thread == loop_thread]
    assert statements  # the tracer saw the store at work
    assert on_loop == []

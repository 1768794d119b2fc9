"""A running service (shipped checkpoints, SQLite store) whose use cases the tests call directly."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.container import Services
from service.settings import Settings


@pytest.fixture
def settings(tmp_path: Path, shipped_weights: Path) -> Settings:
    """The shipped models, a SQLite store of this test's own; a small tile keeps warm-up short."""
    return Settings(
        model_dir=shipped_weights,
        state_dir=tmp_path / "state",
        api_key=None,
        tile_size=64,
        max_image_pixels=300 * 300,
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """The app, its lifespan running; `client.portal` runs coroutines on its event loop."""
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def services(client: TestClient) -> Services:
    """What the running app's routes use: registry, store, engine, drift, metrics."""
    running: Services = client.app.state.services  # type: ignore[attr-defined]
    return running

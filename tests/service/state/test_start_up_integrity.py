"""A real `python -m service` on an empty or truncated state database: one line and a non-zero
exit, or, told to start fresh, a service that moved the file aside and serves.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from service.state.integrity import StateUnsound
from service.state.store import ThresholdStore
from tests.helpers import TINY_MODEL
from tests.servers import ServiceProcess, free_port

START_WITHIN_S = 180  # generous: other test suites may load the machine
# A short warm-up and no ONNX export: these tests are about the state folder.
QUICK = {"UNET_TILE_SIZE": "64", "UNET_BACKEND": "torch", "UNET_LOG_LEVEL": "warning"}


def stored(state: Path) -> Path:
    """A state folder whose database holds a manual threshold for the tiny model."""
    path = state / "thresholds.sqlite3"
    store = ThresholdStore(path)
    store.set_manual(TINY_MODEL, "d" * 64, 0.3)
    store.close()
    return path


def start(model_dir: Path, state: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m service` until it exits on its own (it must: the tests expect a refusal)."""
    return subprocess.run(
        [sys.executable, "-m", "service"],
        env={
            **os.environ,
            "UNET_MODEL_DIR": str(model_dir),
            "UNET_STATE_DIR": str(state),
            "UNET_HOST": "127.0.0.1",
            "UNET_PORT": str(free_port()),
            **QUICK,
            **env,
        },
        capture_output=True,
        text=True,
        timeout=START_WITHIN_S,
    )


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_a_damaged_database_stops_start_up_with_one_line(
    tiny_model_dir: Path, tmp_path: Path, damage: str
) -> None:
    path = stored(tmp_path)
    data = path.read_bytes()
    path.write_bytes(b"" if damage == "empty" else data[: len(data) // 2])
    before = path.read_bytes()

    ran = start(tiny_model_dir, tmp_path)

    assert ran.returncode != 0
    lines = ran.stderr.strip().splitlines()
    assert len(lines) == 1, ran.stderr
    (line,) = lines
    assert "Traceback" not in ran.stderr
    said = "is empty (0 bytes)" if damage == "empty" else "is truncated"
    assert line.startswith(f"unet: cannot start: state database {path} {said}")
    assert "restore a backup" in line and "UNET_STATE_START_FRESH=true" in line
    assert path.read_bytes() == before and list(tmp_path.glob("*damaged*")) == []


@pytest.mark.slow
def test_told_to_start_fresh_it_moves_the_empty_file_aside_and_serves(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    path = stored(tmp_path)
    path.write_bytes(b"")
    service = ServiceProcess(
        tiny_model_dir,
        tmp_path,
        env={**QUICK, "UNET_STATE_START_FRESH": "true"},
        stderr=subprocess.PIPE,
        ready_within_s=START_WITHIN_S,
    )
    try:
        ready = httpx.get(f"{service.base}/readyz", timeout=10).json()
        threshold = httpx.get(f"{service.base}/v1/models/{TINY_MODEL}/threshold", timeout=10)
    finally:
        said = service.stop()
    (aside,) = tmp_path.glob("thresholds.damaged-*.sqlite3")
    assert aside.stat().st_size == 0
    assert f"moved it aside to {aside}" in said and "UNET_STATE_START_FRESH" in said
    assert ready["state"] == "writable"
    assert threshold.json()["source"] == "default"


@pytest.mark.slow
def test_a_new_state_folder_starts_as_ever(tiny_model_dir: Path, tmp_path: Path) -> None:
    state = tmp_path / "brand-new"
    service = ServiceProcess(tiny_model_dir, state, env=QUICK, ready_within_s=START_WITHIN_S)
    try:
        assert httpx.get(f"{service.base}/readyz", timeout=10).status_code == 200
    finally:
        service.stop()
    assert (state / "thresholds.sqlite3").stat().st_size > 0
    assert list(state.glob("*damaged*")) == []


def test_the_app_itself_refuses_an_empty_state_database(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Served some other way (a factory, Ray), the app's start-up refuses it too."""
    (tmp_path / "thresholds.sqlite3").write_bytes(b"")
    settings = Settings(model_dir=tiny_model_dir, state_dir=tmp_path, tile_size=64)
    with pytest.raises(StateUnsound, match="is empty"), TestClient(create_app(settings)):
        pass


def test_a_damaged_drift_file_is_set_aside_and_the_service_starts(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Drift windows are rebuilt from traffic: a damaged file costs minutes, not start-up."""
    (tmp_path / "drift.sqlite3").write_bytes(b"not a database" * 100)
    settings = Settings(model_dir=tiny_model_dir, state_dir=tmp_path, tile_size=64)
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").status_code == 200
    (aside,) = tmp_path.glob("drift.damaged-*.sqlite3")
    assert aside.read_bytes() == b"not a database" * 100
    assert (tmp_path / "drift.sqlite3").read_bytes().startswith(b"SQLite format 3")

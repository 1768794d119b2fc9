"""One model's failure to load, probe or warm up sets that model aside; the others serve.

`/readyz` is 200 once every loadable model is warm and names the unavailable ones; reasons shown
to clients carry no server paths; names are Unicode NFC.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import unicodedata
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from model.errors import CardError, CheckpointError
from service.app import create_app
from service.inference.registry import ModelRegistry, bounded, public_reason
from service.settings import Settings
from tests.bad_models import affine, monai_card, nan_at_side, pickled_pt, write_card, zero_over_zero
from tests.helpers import TINY_MODEL, assert_problem, png, until
from tests.servers import ServiceProcess

CPU = torch.device("cpu")
IMAGE = {"image": ("x.png", png(np.full((40, 48), 90, dtype=np.uint8)), "image/png")}


@pytest.fixture
def folder(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """A model folder holding the tiny model."""
    models = tmp_path / "models"
    shutil.copytree(tiny_model_dir, models)
    return models


def onnx_card(folder: Path, name: str, model: str) -> Path:
    return write_card(folder, name, {"source": {"format": "onnx", "path": model}})


def test_a_model_that_fails_warm_up_is_set_aside_and_the_service_is_ready(
    folder: Path, tmp_path: Path
) -> None:
    onnx_card(folder, "nan-at-256", nan_at_side(folder, 256))  # passes the probe, not warm-up
    settings = Settings(model_dir=folder, state_dir=tmp_path / "state", api_key=None)
    with TestClient(create_app(settings)) as client:
        until(lambda: client.get("/readyz").status_code == 200, "never became ready")
        ready = client.get("/readyz").json()
        assert ready["models"] == [TINY_MODEL]
        reason = ready["unavailable"]["nan-at-256"]
        assert reason.startswith("nan-at-256.json: warm-up failed: ")
        assert "NaN or infinite" in reason
        listed = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
        assert listed["nan-at-256"]["available"] is False
        assert listed["nan-at-256"]["error"] == reason
        body = assert_problem(client.post("/v1/models/nan-at-256/mask", files=IMAGE), 503)
        assert body["type"].endswith("/model-unavailable")
        assert client.post(f"/v1/models/{TINY_MODEL}/mask", files=IMAGE).status_code == 200


def test_hostile_files_leave_start_up_quick_and_the_rest_serving(
    folder: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    affine(outside, 1, 0)
    os.mkfifo(folder / "pipe.onnx")
    (folder / "zero.onnx").symlink_to("/dev/zero")
    (folder / "out.onnx").symlink_to(outside / "affine-1-0.onnx")
    limit = (folder / f"{TINY_MODEL}.safetensors").stat().st_size  # the tiny model fits
    (folder / "big.onnx").write_bytes(b"\0" * (limit + 1))
    cards = {
        "pipe": "pipe.onnx",
        "zero": "zero.onnx",
        "link-out": "out.onnx",
        "dot-dot": "../outside/affine-1-0.onnx",
        "absolute": str(outside / "affine-1-0.onnx"),
        "too-big": "big.onnx",
    }
    for name, path in cards.items():
        onnx_card(folder, name, path)
    os.mkfifo(folder / "pipe-card.json")  # a card that is itself a pipe
    began = time.monotonic()
    registry = ModelRegistry.from_folder(folder, CPU, max_model_bytes=limit)
    assert time.monotonic() - began < 60
    assert registry.names() == [TINY_MODEL]
    failures = registry.failures()
    assert set(failures) == set(cards) | {"pipe-card"}
    for reason in failures.values():
        assert str(tmp_path) not in reason, reason
    assert "is not a regular file" in failures["pipe"]
    assert "is not a regular file" in failures["pipe-card"]
    assert "link out" in failures["zero"]
    assert "link out" in failures["link-out"]
    assert "no absolute path, no '..'" in failures["dot-dot"]
    assert "no absolute path, no '..'" in failures["absolute"]
    assert f"over the limit of {limit}" in failures["too-big"]


def test_hostile_cards_through_the_app_show_no_server_paths(folder: Path, tmp_path: Path) -> None:
    os.mkfifo(folder / "pipe.onnx")
    onnx_card(folder, "pipe", "pipe.onnx")
    onnx_card(folder, "absolute", str(folder / "pipe.onnx"))
    settings = Settings(model_dir=folder, state_dir=tmp_path / "state", api_key=None)
    with TestClient(create_app(settings)) as client:
        until(lambda: client.get("/readyz").status_code == 200, "never became ready")
        for path in ("/readyz", "/v1/models", "/v1/models/pipe"):
            text = client.get(path).text
            assert str(tmp_path) not in text and str(os.getpid()) not in text, text
        assert set(client.get("/readyz").json()["unavailable"]) == {"pipe", "absolute"}


def test_names_are_nfc_and_a_normalisation_clash_is_refused(folder: Path) -> None:
    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    assert nfc != nfd
    for suffix in (".json", ".safetensors"):
        shutil.copy(folder / f"{TINY_MODEL}{suffix}", folder / f"{nfd}{suffix}")
    registry = ModelRegistry.from_folder(folder, CPU)
    assert registry.names() == sorted([TINY_MODEL, nfc])  # served under its NFC name
    assert registry.get(nfd) is registry.get(nfc) is not None  # either spelling finds it

    for suffix in (".json", ".safetensors"):
        shutil.copy(folder / f"{TINY_MODEL}{suffix}", folder / f"{nfc}{suffix}")
    registry = ModelRegistry.from_folder(folder, CPU)
    assert registry.names() == [TINY_MODEL]
    reason = registry.failure(nfd)
    assert reason is not None and "same name after Unicode NFC normalisation" in reason


def join_abandoned(name: str) -> None:
    """Wait for the abandoned load thread `name` to end: none may still run at interpreter exit."""
    for thread in threading.enumerate():
        if thread.name == name:
            thread.join(60)
            assert not thread.is_alive()


def test_loading_has_a_time_bound(folder: Path) -> None:
    with pytest.raises(CheckpointError, match=r"loading took longer than 0.001 s"):
        ModelRegistry.from_folder(folder, CPU, load_timeout_s=0.001)
    join_abandoned(f"load-{TINY_MODEL}")


def test_a_load_that_hangs_is_abandoned(tmp_path: Path) -> None:
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    began = time.monotonic()
    with pytest.raises(CardError, match=r"loading took longer than 0.5 s"):
        bounded(pipe.read_bytes, 0.5, tmp_path / "m.json")  # open() blocks: no writer
    assert time.monotonic() - began < 5
    # Release the abandoned reader: a writer opens the pipe and closes it (end of file).
    os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
    join_abandoned("load-m")


def test_public_reasons_name_files_relative_to_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "models"
    said = f"{folder}/m.json: source.path '/etc/passwd' is not in {tmp_path}/other/x.onnx"
    shown = public_reason(said, folder)
    assert shown == "m.json: source.path 'passwd' is not in x.onnx"


@pytest.mark.slow
def test_shipped_models_serve_beside_a_pickle_a_nan_model_and_a_nan_threshold(
    shipped_weights: Path, tmp_path: Path
) -> None:
    pytest.importorskip("monai.networks.nets")
    models = tmp_path / "models"
    shutil.copytree(shipped_weights, models)
    marker = tmp_path / "pickle-ran"
    monai_card(models, "pickled", pickled_pt(models, marker))
    onnx_card(models, "zero-over-zero", zero_over_zero(models))
    identity = affine(models, 1, 0)
    (models / "nan-threshold.json").write_text(
        json.dumps({"source": {"format": "onnx", "path": identity}, "threshold": float("nan")})
    )
    log = tmp_path / "service.log"
    with log.open("w") as stderr:
        service = ServiceProcess(models, tmp_path / "state", stderr=stderr, ready_within_s=180)
    try:
        ready = httpx.get(f"{service.base}/readyz", timeout=10)
        assert ready.status_code == 200
        body = ready.json()
        assert body["models"] == ["unet-multiclass", "unet-relu", "unet-sigmoid"]
        unavailable = body["unavailable"]
        assert set(unavailable) == {"pickled", "zero-over-zero", "nan-threshold"}
        assert "weights_only=True refuses" in unavailable["pickled"]
        assert "NaN or infinite values" in unavailable["zero-over-zero"]
        assert "NaN is not a finite number" in unavailable["nan-threshold"]
        listing = httpx.get(f"{service.base}/v1/models", timeout=10)
        for text in (ready.text, listing.text):
            assert str(tmp_path) not in text and str(service.process.pid) not in text
        for name in ("unet-sigmoid", "unet-relu"):
            answer = httpx.post(f"{service.base}/v1/models/{name}/mask", files=IMAGE, timeout=30)
            assert answer.status_code == 200, answer.text
        refused = httpx.post(f"{service.base}/v1/models/zero-over-zero/mask", files=IMAGE)
        assert refused.status_code == 503
        assert refused.json()["type"].endswith("/model-unavailable")
    finally:
        service.stop()
    assert not marker.exists()  # the pickle's code never ran
    said = log.read_text()
    for name in ("pickled", "zero-over-zero", "nan-threshold"):
        lines = [line for line in said.splitlines() if f"model {name} is unavailable" in line]
        assert len(lines) == 1, said[-3000:]

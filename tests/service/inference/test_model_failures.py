"""A model that fails to load does not take the others down (as Triton's model repository)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from model.errors import CheckpointError
from service.app import create_app
from service.inference.registry import ModelRegistry
from service.settings import Settings
from tests.helpers import TINY_MODEL, assert_problem, png, until


@pytest.fixture
def folder(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """The tiny model, a card whose network file is missing, and weights without a card."""
    models = tmp_path / "models"
    shutil.copytree(tiny_model_dir, models)
    card = {"source": {"format": "torchscript", "path": "gone.pt"}}
    (models / "broken.json").write_text(json.dumps(card))
    shutil.copy(models / f"{TINY_MODEL}.safetensors", models / "orphan.safetensors")
    return models


def test_the_rest_serve_and_the_broken_ones_say_why(folder: Path, tmp_path: Path) -> None:
    settings = Settings(model_dir=folder, state_dir=tmp_path / "state", api_key=None)
    with TestClient(create_app(settings)) as client:
        until(lambda: client.get("/readyz").status_code == 200, "never became ready")
        ready = client.get("/readyz")
        assert ready.json()["models"] == [TINY_MODEL]
        unavailable = ready.json()["unavailable"]
        assert set(unavailable) == {"broken", "orphan"}
        assert "gone.pt is missing" in unavailable["broken"]

        models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
        assert models[TINY_MODEL]["available"] is True
        broken = models["broken"]
        assert broken["available"] is False
        # Named relative to the model folder: anonymous callers see no server paths.
        assert broken["error"].startswith("broken.json: ")
        assert str(folder) not in client.get("/v1/models").text
        assert broken["threshold"] is None and broken["digest"] is None

        image = png(np.zeros((32, 32), dtype=np.uint8))
        files = {"image": ("x.png", image, "application/octet-stream")}
        response = client.post("/v1/models/broken/mask", files=files)
        body = assert_problem(response, 503)
        assert body["type"].endswith("/model-unavailable")
        assert "gone.pt is missing" in body["detail"]
        assert_problem(client.get("/v1/models/orphan"), 503)
        assert_problem(client.get("/v1/models/nothing"), 404)
        assert client.post(f"/v1/models/{TINY_MODEL}/mask", files=files).status_code == 200


def test_with_no_loadable_model_the_service_does_not_start(folder: Path) -> None:
    (folder / f"{TINY_MODEL}.json").unlink()
    (folder / f"{TINY_MODEL}.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no model could be loaded: .*gone\.pt is missing"):
        ModelRegistry.from_folder(folder, torch.device("cpu"))

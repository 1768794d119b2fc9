"""Guaranteed strategies and recalibration over HTTP: jobs, params, served maps and headers."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from httpx import Response
from PIL import Image

from model.calibration.recalibration import MonotoneMap
from model.calibration.schema import Recalibration
from service.app import create_app
from service.settings import Settings
from service.usecases.recalibrated import CalibrationExtras, guarantee_state
from tests.helpers import (
    TINY_MODEL,
    assert_problem,
    dataset_files,
    make_zip,
    wait_for_calibration,
)

BASE = f"/v1/models/{TINY_MODEL}"


@pytest.fixture
def client(tmp_path: Path, tiny_model_dir: Path) -> Iterator[TestClient]:
    """The app over HTTP with the tiny model, its lifespan running."""
    settings = Settings(
        model_dir=tiny_model_dir, state_dir=tmp_path / "state", api_key=None, tile_size=64
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def _start(client: TestClient, n: int, **form: Any) -> Response:
    files = {"dataset": ("calibration.zip", make_zip(dataset_files(n, 64)), "application/zip")}
    return client.post(f"{BASE}/calibrations", files=files, data=form)


def _finished(client: TestClient, response: Response) -> dict[str, Any]:
    assert response.status_code == 202, response.text
    location = response.headers["location"]
    return wait_for_calibration(lambda: client.get(location).json())


def _image() -> bytes:
    files = dataset_files(1, 64, seed=9)
    return files["images/0000.png"]


def _post(client: TestClient, what: str, **params: str) -> Response:
    files = {"image": ("x.png", _image(), "image/png")}
    return client.post(f"{BASE}/{what}", files=files, params=params)


def test_fnr_control_with_recalibration_serves_the_new_scale_and_the_same_masks(
    client: TestClient,
) -> None:
    raw = np.load(io.BytesIO(_post(client, "probabilities").content))
    done = _finished(
        client,
        _start(client, 8, strategy="fnr_control", target="0.3", recalibrate="platt"),
    )
    assert done["status"] == "succeeded", done["error"]
    assert done["params"]["recalibrate"] == "platt" and "delta" not in done["params"]
    report = done["report"]
    guarantee = report["guarantee"]
    assert guarantee["risk"] == "fnr" and guarantee["alpha"] == 0.3 and guarantee["bound"] == 1
    assert "not a promise for each" in guarantee["statement"]
    rescale = MonotoneMap.of(Recalibration.model_validate(report["recalibration"]))

    # The threshold and the maps are on the recalibrated scale; the mask is the same cut.
    expected_cut = rescale.threshold(report["threshold"])
    assert client.get(f"{BASE}/threshold").json()["value"] == pytest.approx(expected_cut)
    answer = _post(client, "probabilities")
    assert float(answer.headers["x-threshold"]) == pytest.approx(expected_cut)
    assert answer.headers["x-threshold-guarantee"] == "present"
    served = np.load(io.BytesIO(answer.content))
    np.testing.assert_allclose(served, rescale.probabilities(raw), rtol=1e-6, atol=1e-7)
    mask = np.asarray(Image.open(io.BytesIO(_post(client, "mask").content))) > 0
    np.testing.assert_array_equal(mask, raw >= report["threshold"])
    # A request's threshold is read on the served scale too.
    at = _post(client, "mask", threshold=repr(expected_cut))
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(at.content))) > 0, mask)
    info = client.get(BASE).json()
    assert info["guarantee"] == "present"
    assert info["threshold"]["value"] == pytest.approx(expected_cut)


def test_a_set_too_small_to_certify_fails_and_activates_nothing(client: TestClient) -> None:
    failed = _finished(client, _start(client, 3, strategy="fnr_control", target="0.05"))
    assert failed["status"] == "failed" and "needs at least 19" in failed["error"]
    assert client.get(f"{BASE}/threshold").json()["source"] == "default"
    assert "x-threshold-guarantee" not in _post(client, "mask").headers
    assert client.get(BASE).json()["guarantee"] is None


def test_fdr_control_keeps_its_delta(client: TestClient) -> None:
    done = _finished(client, _start(client, 8, strategy="fdr_control", target="0.5", delta="0.2"))
    if done["status"] == "failed":  # a tiny model on 8 images may certify nothing: say why
        assert "cannot certify a false discovery rate" in done["error"]
    else:
        assert done["report"]["guarantee"]["delta"] == 0.2
    assert done["params"]["delta"] == 0.2


@pytest.mark.parametrize(
    ("form", "words"),
    [
        ({"strategy": "fnr_control"}, "needs a target"),
        ({"strategy": "fnr_control", "target": "1.5"}, "strictly between 0 and 1"),
        ({"strategy": "fdr_control", "target": "0.1", "delta": "0"}, "delta must lie"),
        ({"strategy": "fnr_control", "target": "0.1", "delta": "0.1"}, "takes no delta"),
        ({"recalibrate": "beta"}, "temperature, platt, isotonic"),
        ({"recalibrate": " "}, "temperature, platt, isotonic"),
    ],
)
def test_bad_parameters(client: TestClient, form: dict[str, str], words: str) -> None:
    assert words in assert_problem(_start(client, 1, **form), 422)["detail"]


def test_the_guarantee_is_withdrawn_under_a_drift_alert() -> None:
    guaranteed = CalibrationExtras(None, guaranteed=True)
    assert guarantee_state(guaranteed, "ok") == "present"
    assert guarantee_state(guaranteed, "warn") == "present"
    assert guarantee_state(guaranteed, "alert") == "withdrawn (drift alert)"
    assert guarantee_state(CalibrationExtras(), "alert") is None

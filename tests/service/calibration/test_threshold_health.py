"""Threshold health over HTTP: blocked calibrations, force, and drift on live traffic."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from model.data.synth import generate_pair, pair_rng
from service.app import create_app
from service.settings import Settings
from tests.helpers import make_zip, png, wait_for_calibration

SIGMOID = "/v1/models/unet-sigmoid"
CALIBRATION_SEED, SERVED_SEED = 7, 8  # same generator, different images


@pytest.fixture
def settings(tmp_path: Path, shipped_weights: Path) -> Settings:
    """The shipped models; a small tile keeps the warm-up short."""
    return Settings(
        model_dir=shipped_weights, state_dir=tmp_path / "state", api_key=None, tile_size=64
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """The app over HTTP, its lifespan running."""
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def image(seed: int, index: int, invert: bool = False, size: int = 64) -> np.ndarray:
    """One synthetic 8-bit image, optionally in inverted contrast."""
    pixels, _ = generate_pair(pair_rng(seed, index), size)
    return 255 - pixels if invert else pixels


def dataset(n: int, seed: int = CALIBRATION_SEED, invert: bool = False) -> bytes:
    """A calibration zip of `n` synthetic 64 x 64 images."""
    files = {}
    for i in range(n):
        _, mask = generate_pair(pair_rng(seed, i), 64)
        files[f"images/{i:04d}.png"] = png(image(seed, i, invert))
        files[f"masks/{i:04d}.png"] = png(mask)
    return make_zip(files)


def calibrate(client: TestClient, data: bytes, **form: Any) -> dict[str, Any]:
    """Start a calibration of unet-sigmoid and wait for it to finish."""
    files = {"dataset": ("calibration.zip", data, "application/zip")}
    response = client.post(f"{SIGMOID}/calibrations", files=files, data=form)
    assert response.status_code == 202, response.text
    body = wait_for_calibration(lambda: client.get(response.headers["location"]).json())
    assert body["status"] == "succeeded", body["error"]
    return body


def serve(client: TestClient, pixels: np.ndarray) -> None:
    """One mask request, as a client makes it."""
    files = {"image": ("x.png", png(pixels), "image/png")}
    assert client.post(f"{SIGMOID}/mask", files=files).status_code == 200


def drift(client: TestClient) -> dict[str, Any]:
    """GET the model's drift."""
    response = client.get(f"{SIGMOID}/drift")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_inverted_contrast_is_stored_but_not_activated_without_force(client: TestClient) -> None:
    blocked = calibrate(client, dataset(6, invert=True))
    codes = {w["code"]: w["severity"] for w in blocked["report"]["warnings"]}
    assert codes["auc_below_chance"] == "block"
    assert not blocked["active"] and blocked["activate"]
    assert "auc_below_chance" in blocked["activation_blocked"]
    assert "force=true" in blocked["activation_blocked"]
    assert client.get(f"{SIGMOID}/threshold").json()["source"] == "default"

    refused = client.post(f"{SIGMOID}/calibrations/{blocked['id']}/activate")
    assert refused.status_code == 409
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert "auc_below_chance" in refused.json()["detail"]
    forced = client.post(f"{SIGMOID}/calibrations/{blocked['id']}/activate?force=true")
    assert forced.status_code == 200 and forced.json()["calibration_id"] == blocked["id"]
    # The model's answer carries the active calibration's warnings beside the threshold.
    info = client.get(SIGMOID).json()
    assert "auc_below_chance" in [w["code"] for w in info["warnings"]]
    assert info["threshold"]["calibration_id"] == blocked["id"]

    again = calibrate(client, dataset(6, seed=9, invert=True), force="true")
    assert again["active"] and again["activation_blocked"] is None
    assert again["params"]["force"] is True


def test_healthy_calibration_defaults_to_f1_and_activates(client: TestClient) -> None:
    done = calibrate(client, dataset(8))
    report = done["report"]
    assert report["strategy"] == "f1" and done["active"]
    assert not [w for w in report["warnings"] if w["severity"] == "block"]
    assert done["activation_blocked"] is None
    info = client.get(SIGMOID).json()
    assert info["drift_status"] == "ok" and info["warnings"] == report["warnings"]


def test_drift_stays_ok_on_the_calibrations_distribution(
    settings: Settings, client: TestClient
) -> None:
    assert drift(client)["status"] == "no_reference"  # the default threshold has no profile
    calibration = calibrate(client, dataset(16))
    worst = 0.0
    for i in range(500):
        serve(client, image(SERVED_SEED, i))
        if i % 25 == 24:
            now = drift(client)
            assert now["status"] == "ok", now
            worst = max(worst, now["score_distance"])
    now = drift(client)
    assert now["n_images"] == now["window"] == settings.drift_window
    assert now["calibration_id"] == calibration["id"]
    served, reference = now["foreground_fraction"].values()
    assert abs(served - reference) < 0.05
    assert worst < now["cutoffs"]["warn"]
    metrics = client.get("/metrics").text
    assert 'unet_drift_status{model="unet-sigmoid",unet_drift_status="ok"} 1.0' in metrics
    assert 'unet_drift_score_distance{model="unet-sigmoid"}' in metrics
    assert 'unet_drift_foreground_fraction{model="unet-sigmoid",source="served"}' in metrics


def test_inverted_contrast_alerts_within_50_images_and_survives_a_restart(
    settings: Settings,
) -> None:
    with TestClient(create_app(settings)) as client:
        calibrate(client, dataset(8))
        for i in range(50):
            serve(client, image(SERVED_SEED, i, invert=True))
            if drift(client)["status"] == "alert":
                break
        alerted = drift(client)
        assert alerted["status"] == "alert" and alerted["n_images"] <= 50
        assert alerted["score_distance"] >= alerted["cutoffs"]["alert"]
        assert client.get(SIGMOID).json()["drift_status"] == "alert"
        metrics = client.get("/metrics").text
        assert 'unet_drift_status{model="unet-sigmoid",unet_drift_status="alert"} 1.0' in metrics

    with TestClient(create_app(settings)) as restarted:
        assert drift(restarted) == alerted
        # Another calibration starts a new window.
        fresh = calibrate(restarted, dataset(8, seed=11))
        now = drift(restarted)
        assert now["calibration_id"] == fresh["id"] and now["n_images"] == 0
        assert now["status"] == "ok" and now["score_distance"] is None
        # A manual threshold has no score profile to compare with.
        restarted.put(f"{SIGMOID}/threshold", json={"value": 0.4})
        assert drift(restarted)["status"] == "no_reference"


def test_a_drift_alert_withdraws_the_guarantee_from_answers_and_the_model(
    settings: Settings,
) -> None:
    """A conformal guarantee holds for images like the calibration set's; once the served
    images drift to an alert, the answers and the model stop claiming it."""
    with TestClient(create_app(settings)) as client:
        calibration = calibrate(client, dataset(24), strategy="fnr_control", target="0.2")
        guarantee = calibration["report"]["guarantee"]
        # Images with no foreground have no FNR: left out of the risk, and counted.
        assert guarantee["n_images"] + guarantee["per_image"]["n_excluded"] == 24
        files = {"image": ("x.png", png(image(SERVED_SEED, 0)), "image/png")}
        answer = client.post(f"{SIGMOID}/mask", files=files)
        assert answer.headers["x-threshold-guarantee"] == "present"
        assert client.get(SIGMOID).json()["guarantee"] == "present"
        for i in range(50):
            serve(client, image(SERVED_SEED, i, invert=True))
            if drift(client)["status"] == "alert":
                break
        assert drift(client)["status"] == "alert"
        answer = client.post(f"{SIGMOID}/mask", files=files)
        assert answer.headers["x-threshold-guarantee"] == "withdrawn (drift alert)"
        info = client.get(SIGMOID).json()
        assert info["guarantee"] == "withdrawn (drift alert)"
        assert any("guarantee no longer applies" in w["message"] for w in info["warnings"]), info

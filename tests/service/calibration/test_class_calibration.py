"""Calibrating a multi-class model over HTTP: label images in, one report per class out, every
class's threshold activated; label images and class folders that do not fit refused with a 422
naming what was expected."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sklearn.metrics import roc_auc_score

from model.data.synth import generate_labelled, pair_rng
from service.app import create_app
from service.calibration.errors import DatasetRejected
from service.calibration.intake import ClassSpec, extract_dataset
from service.settings import Settings
from tests.helpers import assert_problem, make_zip, png, wait_for_calibration

MULTI = "/v1/models/unet-multiclass"
CLASSES = ["nucleus", "debris"]


def labelled_zip(n: int, seed: int, bad_label: int | None = None) -> bytes:
    files = {}
    for i in range(n):
        image, labels = generate_labelled(pair_rng(seed, i), 96)
        if bad_label is not None and i == 1:
            labels = labels.copy()
            labels[0, 0] = bad_label
        files[f"images/{i:03d}.png"] = png(image)
        files[f"masks/{i:03d}.png"] = png(labels)
    return make_zip(files)


@pytest.fixture
def client(shipped_weights: Path, tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(model_dir=shipped_weights, state_dir=tmp_path / "state")
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_a_calibration_reports_each_class_and_activates_each_threshold(
    client: TestClient,
) -> None:
    data = labelled_zip(6, seed=9201)
    started = client.post(
        f"{MULTI}/calibrations",
        files={"dataset": ("set.zip", data, "application/zip")},
        data={"strategy": "f1"},
    )
    assert started.status_code == 202, started.text
    location = started.headers["location"]
    job = wait_for_calibration(lambda: client.get(location).json())
    assert job["status"] == "succeeded", job
    report = job["report"]
    assert report["mode"] == "multiclass" and list(report["classes"]) == CLASSES
    assert report["n_images"] == 6
    for name in CLASSES:
        each = report["classes"][name]
        assert each["strategy"] == "f1" and 0.9 < each["auc"] <= 1.0
        assert set(each["operating_points"]) >= {"f1", "youden", "fixed_0.5"}
    assert set(report["summary"]["dice"]) == {"calibrated", "argmax", "fixed_0.5"}
    # Activated: every class's threshold comes from this calibration.
    active = client.get(f"{MULTI}/threshold").json()["classes"]
    for name in CLASSES:
        assert active[name]["source"] == "calibration"
        assert active[name]["calibration_id"] == job["id"]
        assert active[name]["value"] == report["classes"][name]["threshold"]
    history = client.get(f"{MULTI}/threshold/history", params={"class": "debris"}).json()
    assert [c["source"] for c in history["changes"]] == ["calibration"]
    listed = client.get(f"{MULTI}/calibrations").json()["calibrations"]
    assert [(c["id"], c["active"]) for c in listed] == [(job["id"], True)]
    roc = client.get(f"{location}/roc.png", params={"class": "debris"})
    assert roc.status_code == 200 and Image.open(io.BytesIO(roc.content)).format == "PNG"
    assert_problem(client.get(f"{location}/roc.png", params={"class": "cell"}), 404)
    # Reset one class by hand, then activate the calibration again: both come back.
    client.put(f"{MULTI}/threshold", params={"class": "nucleus"}, json={"value": 0.9})
    again = client.post(f"{location}/activate")
    assert again.status_code == 200, again.text
    active = client.get(f"{MULTI}/threshold").json()["classes"]
    assert active["nucleus"]["value"] == report["classes"]["nucleus"]["threshold"]


def test_the_report_auc_is_scikit_learns_on_the_served_maps(client: TestClient) -> None:
    n = 3
    data = labelled_zip(n, seed=9202)
    started = client.post(
        f"{MULTI}/calibrations", files={"dataset": ("set.zip", data, "application/zip")}
    )
    job = wait_for_calibration(lambda: client.get(started.headers["location"]).json())
    scores, truth = [], []
    for i in range(n):
        image, labels = generate_labelled(pair_rng(9202, i), 96)
        answer = client.post(
            f"{MULTI}/probabilities", files={"image": ("x.png", png(image), "image/png")}
        )
        scores.append(np.load(io.BytesIO(answer.content)))
        truth.append(labels)
    maps, labels = np.stack(scores), np.stack(truth)
    for k, name in enumerate(CLASSES, start=1):
        expected = roc_auc_score((labels == k).ravel(), maps[:, k - 1].ravel())
        assert job["report"]["classes"][name]["auc"] == pytest.approx(expected, abs=1e-4)


def test_a_label_outside_the_classes_is_refused_naming_the_range(client: TestClient) -> None:
    data = labelled_zip(3, seed=9203, bad_label=3)
    response = client.post(
        f"{MULTI}/calibrations", files={"dataset": ("set.zip", data, "application/zip")}
    )
    problem = assert_problem(response, 422)
    assert "masks/001.png" in problem["detail"] and "outside 0..2" in problem["detail"]


def test_multilabel_class_folders_must_be_the_cards_classes(tmp_path: Path) -> None:
    spec = ClassSpec("multilabel", ("nucleus", "debris"))
    image, labels = generate_labelled(pair_rng(9204, 0), 64)
    good = {
        "images/a.png": png(image),
        "masks/nucleus/a.png": png((labels == 1).astype(np.uint8) * 255),
        "masks/debris/a.png": png((labels == 2).astype(np.uint8) * 255),
    }
    settings = Settings(state_dir=tmp_path / "state")
    dataset = extract_dataset(make_zip(good), tmp_path / "good", settings, spec)
    assert [image.name for image, _ in dataset.pairs] == ["a.png"]
    wrong = {**good, "masks/cell/a.png": good.pop("masks/debris/a.png")}
    with pytest.raises(DatasetRejected) as refused:
        extract_dataset(make_zip(wrong), tmp_path / "wrong", settings, spec)
    message = str(refused.value)
    assert "nucleus, debris" in message and "cell" in message
    assert json.dumps(message)  # one line a problem document can carry


def test_each_class_may_have_its_own_strategy(client: TestClient) -> None:
    data = labelled_zip(4, seed=9205)
    choices = {"debris": {"strategy": "target_tpr", "target": 0.95}}
    started = client.post(
        f"{MULTI}/calibrations",
        files={"dataset": ("set.zip", data, "application/zip")},
        data={"strategy": "youden", "class_params": json.dumps(choices), "activate": "false"},
    )
    assert started.status_code == 202, started.text
    job = wait_for_calibration(lambda: client.get(started.headers["location"]).json())
    classes = job["report"]["classes"]
    assert classes["nucleus"]["strategy"] == "youden"
    assert classes["debris"]["strategy"] == "target_tpr" and classes["debris"]["target"] == 0.95
    assert classes["debris"]["operating_points"]["target_tpr"]["tpr"] >= 0.95
    for form, words in (
        ({"strategy": "fnr_control", "target": "0.1"}, "apply to binary models"),
        ({"recalibrate": "platt"}, "recalibrate=platt apply to binary models"),
        ({"class_params": '{"debris": {"strategy": "fdr_control", "target": 0.2}}'}, "fdr_control"),
    ):
        refused = client.post(
            f"{MULTI}/calibrations",
            files={"dataset": ("set.zip", data, "application/zip")},
            data=form,
        )
        assert words in assert_problem(refused, 422)["detail"]
    for bad, words in (
        ('{"cell": {}}', "nucleus, debris"),
        ('{"debris": {"strategy": "nope"}}', "debris"),
        ('{"debris": {"cost_fp": "x"}}', "debris"),
        ("[1]", "JSON object"),
    ):
        refused = client.post(
            f"{MULTI}/calibrations",
            files={"dataset": ("set.zip", data, "application/zip")},
            data={"class_params": bad},
        )
        assert words in assert_problem(refused, 422)["detail"]


def test_each_class_is_watched_for_drift_against_its_own_profile(client: TestClient) -> None:
    data = labelled_zip(4, seed=9206)
    started = client.post(
        f"{MULTI}/calibrations", files={"dataset": ("set.zip", data, "application/zip")}
    )
    job = wait_for_calibration(lambda: client.get(started.headers["location"]).json())
    assert job["status"] == "succeeded"
    before = client.get(f"{MULTI}/drift", params={"class": "debris"}).json()
    assert before["n_images"] == 0 and before["calibration_id"] == job["id"]
    for i in range(3):
        image, _ = generate_labelled(pair_rng(9207, i), 96)
        answer = client.post(f"{MULTI}/mask", files={"image": ("x.png", png(image), "image/png")})
        assert answer.status_code == 200
    for name in CLASSES:
        drift = client.get(f"{MULTI}/drift", params={"class": name}).json()
        assert drift["n_images"] == 3 and drift["calibration_id"] == job["id"]
        assert drift["score_distance"] is not None
    assert client.get(MULTI).json()["drift_status"] in ("ok", "warn", "alert")
    metrics = client.get("/metrics").text
    assert 'unet_drift_class_score_distance{class="debris",model="unet-multiclass"}' in metrics
    refused = assert_problem(client.get(f"{MULTI}/drift"), 422)
    assert "class=NAME" in refused["detail"]
    assert_problem(client.get(f"{MULTI}/drift", params={"class": "cell"}), 404)

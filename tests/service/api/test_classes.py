"""Multi-class answers through the real app with the shipped unet-multiclass (and a binary model).

The maps, masks, label images and headers of a multi-class model; the stated decision rule
checked pixel for pixel against the npy maps and the thresholds in force; bad `?class=` and
`?format=` requests refused before any model pass.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from model.calibration.decision import decide
from model.data.synth import generate_labelled, pair_rng
from service.app import create_app
from service.inference.encoding import rle_decode
from service.settings import Settings
from tests.helpers import assert_problem, png

MULTI, BINARY = "/v1/models/unet-multiclass", "/v1/models/unet-sigmoid"
CLASSES = ["nucleus", "debris"]


@pytest.fixture(scope="module")
def cells() -> tuple[np.ndarray, np.ndarray]:
    """An unseen synthetic image with debris, and its label image (0, 1 nucleus, 2 debris)."""
    return generate_labelled(pair_rng(9101, 0), 128)


@pytest.fixture
def client(shipped_weights: Path, tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(model_dir=shipped_weights, state_dir=tmp_path / "state")
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def post(client: TestClient, path: str, image: np.ndarray, **params: object):
    files = {"image": ("x.png", png(image), "application/octet-stream")}
    return client.post(path, files=files, params=params)


def npy(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.load(io.BytesIO(response.content), allow_pickle=False)


def decoded(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content)))


def header_thresholds(text: str) -> dict[str, float]:
    return {name: float(value) for name, value in (part.split("=") for part in text.split(";"))}


def test_model_info_lists_mode_classes_and_a_threshold_per_class(
    client: TestClient, shipped_weights: Path
) -> None:
    models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    multi, binary = models["unet-multiclass"], models["unet-sigmoid"]
    assert binary["mode"] == "binary" and binary["classes"] == []
    assert binary["class_thresholds"] is None and binary["threshold"]["source"] == "default"
    assert multi["mode"] == "multiclass" and multi["classes"] == CLASSES
    recorded = json.loads((shipped_weights / "unet-multiclass.json").read_text())
    defaults = recorded["default_threshold"]["classes"]
    # A client that reads one threshold reads the first class's.
    assert multi["threshold"] == multi["class_thresholds"]["nucleus"]
    assert multi["default_threshold"] == defaults["nucleus"]
    assert {name: t["value"] for name, t in multi["class_thresholds"].items()} == defaults
    assert {t["source"] for t in multi["class_thresholds"].values()} == {"default"}
    assert client.get(MULTI).json() == multi


def test_maps_masks_and_labels_follow_the_stated_rule(client: TestClient, cells) -> None:
    image, truth = cells
    maps = npy(post(client, f"{MULTI}/probabilities", image))
    assert maps.dtype == np.float32 and maps.shape == (2, *image.shape)
    for k, name in enumerate(CLASSES):
        one = npy(post(client, f"{MULTI}/probabilities", image, **{"class": name}))
        np.testing.assert_array_equal(one, maps[k])
    response = post(client, f"{MULTI}/mask", image, format="labels")
    thresholds = header_thresholds(response.headers["x-threshold"])
    assert list(thresholds) == CLASSES
    assert response.headers["x-threshold-source"] == "nucleus=default;debris=default"
    labels = decoded(response)
    expected = decide(maps, [thresholds[name] for name in CLASSES])
    np.testing.assert_array_equal(labels, expected)
    # The model finds the classes it was trained on.
    for k in (1, 2):
        found, wanted = labels == k, truth == k
        assert 2 * (found & wanted).sum() / (found.sum() + wanted.sum()) > 0.6
    for k, name in enumerate(CLASSES, start=1):
        mask = decoded(post(client, f"{MULTI}/mask", image, **{"class": name}))
        np.testing.assert_array_equal(mask, np.where(labels == k, 255, 0))
    answer = post(client, f"{MULTI}/mask", image, format="json").json()
    assert answer["mode"] == "multiclass" and answer["threshold"] == response.headers["x-threshold"]
    for k, name in enumerate(CLASSES, start=1):
        entry = answer["classes"][name]
        assert entry["threshold"] == thresholds[name] and entry["threshold_source"] == "default"
        np.testing.assert_array_equal(rle_decode(entry["rle"]), labels == k)
        assert entry["foreground_fraction"] == pytest.approx((labels == k).mean())


def test_a_request_threshold_cuts_every_class(client: TestClient, cells) -> None:
    image, _ = cells
    maps = npy(post(client, f"{MULTI}/probabilities", image))
    response = post(client, f"{MULTI}/mask", image, format="labels", threshold=0.9)
    assert response.headers["x-threshold"] == "nucleus=0.9;debris=0.9"
    assert response.headers["x-threshold-source"] == "nucleus=request;debris=request"
    np.testing.assert_array_equal(decoded(response), decide(maps, [0.9, 0.9]))


def test_overlay_draws_each_class_in_its_colour(client: TestClient, cells) -> None:
    image, _ = cells
    labels = decoded(post(client, f"{MULTI}/mask", image, format="labels"))
    everything = decoded(post(client, f"{MULTI}/overlay", image))
    nucleus_only = decoded(post(client, f"{MULTI}/overlay", image, **{"class": "nucleus"}))
    assert everything.shape == (*image.shape, 3)
    debris = labels == 2
    assert debris.any()
    # Debris is tinted in the full overlay and left as the grey input in the nucleus-only one.
    grey = nucleus_only[debris]
    assert (grey[:, 0] == grey[:, 1]).all() and (grey[:, 1] == grey[:, 2]).all()
    tinted = everything[debris]
    assert (tinted[:, 0] != tinted[:, 2]).mean() > 0.9


def test_binary_answers_keep_their_shape(client: TestClient, cells) -> None:
    image, _ = cells
    response = post(client, f"{BINARY}/mask", image, format="json")
    body = response.json()
    assert set(body) == {
        "width",
        "height",
        "threshold",
        "threshold_source",
        "foreground_fraction",
        "rle",
    }
    assert float(response.headers["x-threshold"]) == body["threshold"]
    assert npy(post(client, f"{BINARY}/probabilities", image)).shape == image.shape


def test_class_and_format_mistakes_are_problems_naming_what_to_fix(
    client: TestClient, cells
) -> None:
    image, _ = cells
    before = client.get("/metrics").text.count("\n")
    unknown = assert_problem(post(client, f"{MULTI}/mask", image, **{"class": "cell"}), 404)
    assert "'cell'" in unknown["detail"] and "nucleus, debris" in unknown["detail"]
    unknown = assert_problem(
        post(client, f"{MULTI}/probabilities", image, **{"class": "cell"}), 404
    )
    assert "nucleus, debris" in unknown["detail"]
    binary = assert_problem(post(client, f"{BINARY}/mask", image, **{"class": "nucleus"}), 422)
    assert "binary" in binary["detail"]
    assert_problem(post(client, f"{BINARY}/overlay", image, **{"class": "nucleus"}), 422)
    labels = assert_problem(post(client, f"{BINARY}/mask", image, format="labels"), 422)
    assert "label image" in labels["detail"]
    png16 = assert_problem(post(client, f"{MULTI}/probabilities", image, format="png"), 422)
    assert "class=NAME" in png16["detail"]
    one = post(client, f"{MULTI}/probabilities", image, format="png", **{"class": "debris"})
    assert decoded(one).dtype == np.uint16
    assert before > 0


def test_thresholds_per_class_history_and_gauges(client: TestClient, cells) -> None:
    image, _ = cells
    everyone = client.get(f"{MULTI}/threshold").json()["classes"]
    assert list(everyone) == CLASSES
    debris_default = everyone["debris"]["value"]
    changed = client.put(f"{MULTI}/threshold", params={"class": "debris"}, json={"value": 0.7})
    assert changed.status_code == 200 and changed.json()["source"] == "manual"
    assert client.get(f"{MULTI}/threshold", params={"class": "debris"}).json()["value"] == 0.7
    assert client.get(f"{MULTI}/threshold").json()["classes"]["nucleus"] == everyone["nucleus"]
    # Inference cuts debris at its new threshold, nucleus at its own.
    response = post(client, f"{MULTI}/mask", image, format="labels")
    assert header_thresholds(response.headers["x-threshold"])["debris"] == 0.7
    assert response.headers["x-threshold-source"] == "nucleus=default;debris=manual"
    info = client.get(MULTI).json()["class_thresholds"]
    assert info["debris"]["value"] == 0.7 and info["debris"]["source"] == "manual"
    metrics = client.get("/metrics").text
    assert 'unet_active_class_threshold{class="debris",model="unet-multiclass"} 0.7' in metrics
    assert 'unet_active_threshold{model="unet-sigmoid"}' in metrics
    assert 'unet_active_threshold{model="unet-multiclass"}' not in metrics
    # History per class: debris has the change, nucleus nothing.
    history = client.get(f"{MULTI}/threshold/history", params={"class": "debris"}).json()
    assert [(c["value"], c["source"]) for c in history["changes"]] == [(0.7, "manual")]
    nucleus = client.get(f"{MULTI}/threshold/history", params={"class": "nucleus"}).json()
    assert nucleus["changes"] == []
    reset = client.delete(f"{MULTI}/threshold", params={"class": "debris"})
    assert reset.json() == {**everyone["debris"], "value": debris_default}
    history = client.get(f"{MULTI}/threshold/history", params={"class": "debris"}).json()
    assert [c["source"] for c in history["changes"]] == ["default", "manual"]
    assert history["changes"][0]["value"] == debris_default
    # The binary model's threshold is untouched by all of it.
    assert client.get(f"{BINARY}/threshold/history").json()["changes"] == []


def test_threshold_class_mistakes(client: TestClient) -> None:
    missing = assert_problem(client.put(f"{MULTI}/threshold", json={"value": 0.5}), 422)
    assert "class=NAME" in missing["detail"] and "nucleus, debris" in missing["detail"]
    assert_problem(client.delete(f"{MULTI}/threshold"), 422)
    assert_problem(client.get(f"{MULTI}/threshold/history"), 422)
    unknown = client.put(f"{MULTI}/threshold", params={"class": "cell"}, json={"value": 0.5})
    assert "nucleus, debris" in assert_problem(unknown, 404)["detail"]
    binary = client.get(f"{BINARY}/threshold", params={"class": "nucleus"})
    assert "binary" in assert_problem(binary, 422)["detail"]
    out_of_range = client.put(f"{MULTI}/threshold", params={"class": "debris"}, json={"value": 2})
    assert_problem(out_of_range, 422)


def test_a_large_image_is_tiled_into_every_class_map(
    client: TestClient, shipped_weights: Path, tmp_path: Path
) -> None:
    image, _ = generate_labelled(pair_rng(9102, 0), 200)
    whole = npy(post(client, f"{MULTI}/probabilities", image))
    settings = Settings(
        model_dir=shipped_weights,
        state_dir=tmp_path / "tiled",
        tile_size=96,
        tile_threshold_pixels=128 * 128,
    )
    with TestClient(create_app(settings)) as tiled_client:
        tiled = npy(post(tiled_client, f"{MULTI}/probabilities", image))
        labels = decoded(post(tiled_client, f"{MULTI}/mask", image, format="labels"))
    assert tiled.shape == whole.shape == (2, 200, 200)
    # Blended tiles see what the whole pass sees away from their edges: the maps agree closely.
    assert np.abs(tiled - whole).mean() < 0.01
    np.testing.assert_array_equal(labels, decide(tiled, [*header_defaults(client).values()]))


def header_defaults(client: TestClient) -> dict[str, float]:
    found = client.get(f"{MULTI}/threshold").json()["classes"]
    return {name: found[name]["value"] for name in CLASSES}

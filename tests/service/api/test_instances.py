"""POST /v1/models/{m}/instances through the real app and the shipped checkpoints.

Every format describes the same objects; the objects are exactly the `/mask` answer's pixels;
tiled images are labelled after stitching; a calibrated threshold brings a count range.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from model.data.synth import generate_pair, pair_rng
from model.inference.instance_formats import read_labels
from model.inference.instances import InstanceOptions, count_objects, label_scores
from service.app import create_app
from service.settings import Settings
from tests.helpers import (
    PROBLEM,
    assert_problem,
    dataset_files,
    make_zip,
    png,
    wait_for_calibration,
)

SIGMOID = "/v1/models/unet-sigmoid"


@pytest.fixture(scope="module")
def nuclei() -> np.ndarray:
    """An unseen synthetic microscopy image (uint8, 192 x 192): touching nuclei, some cut."""
    return generate_pair(pair_rng(9002, 0), 192)[0]


@pytest.fixture
def client(shipped_weights: Path, tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(model_dir=shipped_weights, state_dir=tmp_path / "state")
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def post(client: TestClient, path: str, data: bytes, **params: object):
    files = {"image": ("x.png", data, "application/octet-stream")}
    return client.post(path, files=files, params=params)


def test_every_format_describes_the_mask_objects(client: TestClient, nuclei: np.ndarray) -> None:
    data = png(nuclei)
    mask = np.asarray(Image.open(io.BytesIO(post(client, f"{SIGMOID}/mask", data).content))) > 0
    answers = {
        fmt: post(client, f"{SIGMOID}/instances", data, format=fmt)
        for fmt in ("json", "geojson", "csv", "labels")
    }
    for answer in answers.values():
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-threshold-source"] == "default"
    table = answers["json"].json()
    collection = answers["geojson"].json()
    rows = list(csv.DictReader(io.StringIO(answers["csv"].text)))
    labels = read_labels(answers["labels"].content)
    assert answers["labels"].headers["content-type"] == "image/png"
    assert answers["geojson"].headers["content-type"] == "application/geo+json"
    assert answers["csv"].headers["content-type"].startswith("text/csv")
    count = table["count"]
    assert count > 5 and table["split"] == "watershed" and table["count_range"] is None
    assert count == len(table["objects"]) == len(collection["features"]) == len(rows)
    assert count == labels.max() == int(answers["geojson"].headers["x-object-count"])
    # The labels' union is the /mask answer (min_area 0), and each area its pixel count.
    assert np.array_equal(labels > 0, mask)
    areas = np.bincount(labels.ravel())
    assert [o["area"] for o in table["objects"]] == areas[1:].tolist()
    assert [int(r["area"]) for r in rows] == areas[1:].tolist()
    assert collection["properties"]["model"] == "unet-sigmoid"
    assert collection["properties"]["threshold"] == float(answers["json"].headers["x-threshold"])
    feature = collection["features"][0]
    assert feature["properties"]["objectType"] == "detection"
    assert feature["properties"]["classification"]["name"] == "foreground"
    # Components merge touching nuclei that the watershed splits.
    merged = post(client, f"{SIGMOID}/instances", data, split="none").json()["count"]
    assert merged < count


def test_threshold_rules_are_those_of_mask(client: TestClient, nuclei: np.ndarray) -> None:
    answer = post(client, f"{SIGMOID}/instances", png(nuclei), threshold=0.9, min_area=20)
    assert answer.headers["x-threshold"] == "0.9"
    assert answer.headers["x-threshold-source"] == "request"
    assert all(o["area"] >= 20 for o in answer.json()["objects"])
    assert_problem(post(client, f"{SIGMOID}/instances", png(nuclei), threshold=1.5), 422)


@pytest.mark.parametrize(
    ("params", "allowed"),
    [
        ({"format": "xml"}, "'labels', 'json', 'geojson' or 'csv'"),
        ({"split": "blobs"}, "'none' or 'watershed'"),
        ({"min_area": -1}, "greater than or equal to 0"),
        ({"connectivity": 4}, "1 or 2"),
    ],
)
def test_bad_parameters_get_a_422_naming_the_allowed_values(
    client: TestClient, nuclei: np.ndarray, params: dict, allowed: str
) -> None:
    answer = post(client, f"{SIGMOID}/instances", png(nuclei), **params)
    assert answer.headers["content-type"] == PROBLEM
    problem = assert_problem(answer, 422)
    assert allowed in problem["detail"], problem["detail"]


def test_tiled_images_are_labelled_after_stitching(shipped_weights: Path, tmp_path: Path) -> None:
    image = generate_pair(pair_rng(9003, 0), 320)[0]
    settings = Settings(
        model_dir=shipped_weights,
        state_dir=tmp_path / "state",
        tile_size=128,
        tile_threshold_pixels=128 * 128,
    )
    with TestClient(create_app(settings)) as client:
        scores = np.load(io.BytesIO(post(client, f"{SIGMOID}/probabilities", png(image)).content))
        answer = post(client, f"{SIGMOID}/instances", png(image), format="labels")
    threshold = float(answer.headers["x-threshold"])
    labels = read_labels(answer.content)
    # Labelling the whole stitched map gives the same objects: none is cut at a tile seam.
    assert np.array_equal(labels, label_scores(scores, threshold, InstanceOptions()))
    seams = labels[:, 95:97]  # tiles of 128 with 25% overlap meet around column 96
    crossing = set(np.unique(seams[:, 0])) & set(np.unique(seams[:, 1])) - {0}
    assert crossing, "no object spans the seam in this image"


def test_a_calibrated_threshold_brings_the_count_at_its_interval_ends(
    client: TestClient, nuclei: np.ndarray
) -> None:
    files = {
        "dataset": ("c.zip", make_zip(dataset_files(n=8, size=96, seed=61)), "application/zip")
    }
    started = client.post(f"{SIGMOID}/calibrations", files=files, data={"force": "true"})
    assert started.status_code == 202, started.text
    job = wait_for_calibration(lambda: client.get(started.headers["location"]).json())
    assert job["status"] == "succeeded", job
    low, high = job["report"]["threshold_ci"]
    answer = post(client, f"{SIGMOID}/instances", png(nuclei))
    assert answer.headers["x-threshold-source"] == "calibration"
    found = answer.json()["count_range"]
    assert found["calibration_id"] == job["id"]
    assert found["thresholds"] == [low, high]
    scores = np.load(io.BytesIO(post(client, f"{SIGMOID}/probabilities", png(nuclei)).content))
    expected = [count_objects(scores, cut, InstanceOptions()) for cut in (low, high)]
    assert found["counts"] == expected
    # A request's own threshold is not the calibration's: no interval to count at.
    own = post(client, f"{SIGMOID}/instances", png(nuclei), threshold=0.5)
    assert json.loads(own.text)["count_range"] is None


MULTI = "/v1/models/unet-multiclass"


@pytest.fixture(scope="module")
def cells() -> np.ndarray:
    """An unseen synthetic image with nuclei and debris (uint8, 128 x 128)."""
    from model.data.synth import generate_labelled

    return generate_labelled(pair_rng(9102, 0), 128)[0]


def test_a_class_of_a_multi_class_model_is_the_objects_of_its_mask(
    client: TestClient, cells: np.ndarray
) -> None:
    data = png(cells)
    for name in ("nucleus", "debris"):
        mask = post(client, f"{MULTI}/mask", data, **{"class": name})
        assert mask.status_code == 200, mask.text
        pixels = np.asarray(Image.open(io.BytesIO(mask.content))) > 0
        answer = post(client, f"{MULTI}/instances", data, format="labels", **{"class": name})
        assert answer.status_code == 200, answer.text
        labels = read_labels(answer.content)
        # The class's objects are exactly the pixels /mask?class= gives that class.
        assert np.array_equal(labels > 0, pixels)
        assert int(answer.headers["x-object-count"]) == labels.max()
        assert answer.headers["x-threshold"] == mask.headers["x-threshold"]
        table = post(client, f"{MULTI}/instances", data, **{"class": name}).json()
        assert table["count"] == labels.max() == len(table["objects"])
        assert {o["class"] for o in table["objects"]} <= {name}
        assert list(table["classes"]) == [name]
        areas = np.bincount(labels.ravel())[1:].tolist()
        assert [o["area"] for o in table["objects"]] == areas
    assert pixels.any(), "no debris in this image"


def test_without_a_class_every_class_s_objects_come_with_their_class(
    client: TestClient, cells: np.ndarray
) -> None:
    data = png(cells)
    counts = {
        name: post(client, f"{MULTI}/instances", data, **{"class": name}).json()["count"]
        for name in ("nucleus", "debris")
    }
    assert all(counts.values()), counts
    table = post(client, f"{MULTI}/instances", data).json()
    collection = post(client, f"{MULTI}/instances", data, format="geojson").json()
    rows = list(
        csv.DictReader(io.StringIO(post(client, f"{MULTI}/instances", data, format="csv").text))
    )
    assert table["threshold"] is None and set(table["classes"]) == set(counts)
    assert {k: v["count"] for k, v in table["classes"].items()} == counts
    assert table["count"] == sum(counts.values()) == len(collection["features"]) == len(rows)
    for name, count in counts.items():
        assert sum(o["class"] == name for o in table["objects"]) == count
        assert sum(r["class"] == name for r in rows) == count
        named = [
            f["properties"]["classification"]
            for f in collection["features"]
            if f["properties"]["classification"]["name"] == name
        ]
        assert len(named) == count
        assert named[0]["color"] == collection["properties"]["classes"][name]["color"]
    colours = {tuple(c["color"]) for c in collection["properties"]["classes"].values()}
    assert len(colours) == 2, "one colour per class"


@pytest.mark.parametrize(
    ("path", "params", "status", "says"),
    [
        (MULTI, {"class": "stroma"}, 404, "nucleus, debris"),
        (SIGMOID, {"class": "nucleus"}, 422, "binary"),
        (MULTI, {"format": "labels"}, 422, "add class=NAME"),
    ],
)
def test_class_requests_the_model_cannot_answer_are_refused(
    client: TestClient, cells: np.ndarray, path: str, params: dict, status: int, says: str
) -> None:
    problem = assert_problem(post(client, f"{path}/instances", png(cells), **params), status)
    assert says in problem["detail"], problem["detail"]


def test_a_real_micrograph_as_a_16_bit_tiff_gives_valid_objects_that_are_the_mask(
    client: TestClient,
) -> None:
    """Not the project's own synthetic cells: scikit-image's bundled micrograph of a cell
    (`skimage.data.cell`, shipped inside the package), sent as a 16-bit TIFF."""
    import shapely
    import tifffile
    from shapely.geometry import shape
    from skimage import data

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, data.cell().astype(np.uint16) * 257)
    tiff = buffer.getvalue()
    collection = post(client, f"{SIGMOID}/instances", tiff, format="geojson")
    labels = read_labels(post(client, f"{SIGMOID}/instances", tiff, format="labels").content)
    mask = np.asarray(Image.open(io.BytesIO(post(client, f"{SIGMOID}/mask", tiff).content)))
    features = collection.json()["features"]
    assert int(collection.headers["x-object-count"]) == len(features) == labels.max() > 10
    assert all(shapely.is_valid(shape(feature["geometry"])) for feature in features)
    assert np.array_equal(labels > 0, mask == 255)

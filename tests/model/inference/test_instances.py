"""Objects from a score map: labels, the table, GeoJSON and CSV agree with each other.

The consistency checks run on the shipped model's output for a synthetic image (real outlines,
touching nuclei, objects cut by the frame), and on hand-made shapes for holes and corners.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import shapely
from shapely.geometry import shape

from model.cards.sources import load_predictor
from model.cli import main
from model.data.synth import generate_instances, generate_pair, pair_rng, write_dataset
from model.inference.instance_formats import (
    CSV_COLUMNS,
    collection_json,
    csv_table,
    feature_collection,
    feature_texts,
    labels_file,
    polygons,
    read_labels,
)
from model.inference.instances import (
    InstanceOptions,
    label_mask,
    label_scores,
    match_objects,
    object_table,
)
from model.inference.predict import predict

WEIGHTS = Path(__file__).resolve().parents[3] / "model" / "weights"


@pytest.fixture(scope="module")
def scored() -> tuple[np.ndarray, float]:
    """The shipped sigmoid model's map of an unseen 256 px synthetic image, and its threshold."""
    predictor = load_predictor(WEIGHTS / "unet-sigmoid.json")
    image, _ = generate_pair(pair_rng(4242, 0), 256)
    scores = predict(predictor, (image.astype(np.float32) / 255)[None]).output
    assert predictor.card.threshold is not None
    return scores, float(predictor.card.threshold)


def _disc(shape_: tuple[int, int], cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape_[0], : shape_[1]]
    return np.asarray((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r)


def _rasterise(geometry: dict, height: int, width: int) -> np.ndarray:
    """Pixels whose centre lies inside the polygon (an independent rasteriser: shapely)."""
    yy, xx = np.mgrid[:height, :width]
    return np.asarray(shapely.contains_xy(shape(geometry), xx + 0.5, yy + 0.5))


def _signed_area(ring: list[list[float]]) -> float:
    x, y = np.asarray(ring, dtype=float).T
    return float(np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]) / 2)


@pytest.mark.parametrize("split", ["none", "watershed"])
def test_polygons_table_and_labels_agree(scored: tuple[np.ndarray, float], split: str) -> None:
    scores, threshold = scored
    labels = label_scores(scores, threshold, InstanceOptions(split=split))  # type: ignore[arg-type]
    rows = object_table(labels, scores)
    collection = feature_collection(labels, rows, {"model": "unet-sigmoid", "threshold": threshold})
    table = list(csv.DictReader(io.StringIO(csv_table(rows))))
    count = int(labels.max())
    assert count > 10
    assert count == len(rows) == len(collection["features"]) == len(table)
    areas = np.bincount(labels.ravel())
    height, width = labels.shape
    for row, feature, line in zip(rows, collection["features"], table, strict=True):
        assert feature["properties"]["id"] == row.id == int(line["id"])
        assert row.area == areas[row.id] == int(line["area"])
        drawn = _rasterise(feature["geometry"], height, width)
        own = labels == row.id
        iou = (drawn & own).sum() / (drawn | own).sum()
        assert iou >= (0.99 if row.area > 100 else 0.95), (row.id, iou)
        ys, xs = np.nonzero(own)
        assert row.centroid == pytest.approx((xs.mean() + 0.5, ys.mean() + 0.5))
        assert row.bbox == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert row.max_probability == pytest.approx(scores[own].max())
        assert row.touches_border == bool(
            xs.min() == 0 or ys.min() == 0 or xs.max() == width - 1 or ys.max() == height - 1
        )
    assert any(row.touches_border for row in rows)
    assert collection["properties"] == {"model": "unet-sigmoid", "threshold": threshold}


def test_labels_union_is_the_mask_for_min_area_zero(scored: tuple[np.ndarray, float]) -> None:
    scores, threshold = scored
    for split in ("none", "watershed"):
        for connectivity in (1, 2):
            options = InstanceOptions(split, 0, connectivity)  # type: ignore[arg-type]
            labels = label_scores(scores, threshold, options)
            assert np.array_equal(labels > 0, scores >= threshold)
            np.testing.assert_array_equal(label_scores(scores, threshold, options, 2), labels)
            assert np.array_equal(np.unique(labels), np.arange(labels.max() + 1))


def test_geojson_is_valid_right_handed_and_reads_as_qupath_detections(
    scored: tuple[np.ndarray, float],
) -> None:
    scores, threshold = scored
    mask = scores >= threshold
    # A donut (hole kept) and two squares meeting only at a corner (one object at connectivity 2).
    mask[100:140, 100:140] = _disc((40, 40), 20, 20, 19) & ~_disc((40, 40), 20, 20, 8)
    mask[200:210, 10:20] = True
    mask[210:220, 20:30] = True
    mask[200:210, 20:30] = mask[210:220, 10:20] = False
    labels = label_mask(mask, InstanceOptions("none", 0, 2))
    rows = object_table(labels, scores)
    text = json.dumps(feature_collection(labels, rows, {"threshold": threshold}, "nucleus"))
    collection = json.loads(text)
    # What QuPath's GeoJSON importer reads: a FeatureCollection of Features with a Polygon or
    # MultiPolygon geometry, objectType and a classification with a name and an RGB colour.
    assert collection["type"] == "FeatureCollection"
    kinds = set()
    holes = 0
    for feature in collection["features"]:
        assert feature["type"] == "Feature"
        geometry = feature["geometry"]
        kinds.add(geometry["type"])
        assert geometry["type"] in ("Polygon", "MultiPolygon")
        properties = feature["properties"]
        assert properties["objectType"] == "detection"
        assert properties["classification"]["name"] == "nucleus"
        assert len(properties["classification"]["color"]) == 3
        assert shape(geometry).is_valid, shapely.is_valid_reason(shape(geometry))
        parts = [geometry["coordinates"]]
        if geometry["type"] == "MultiPolygon":
            parts = geometry["coordinates"]
        for rings in parts:
            for k, ring in enumerate(rings):
                assert ring[0] == ring[-1] and len(ring) >= 4
                # RFC 7946: exteriors counterclockwise, holes clockwise.
                assert (_signed_area(ring) > 0) == (k == 0)
            holes += len(rings) - 1
    assert holes >= 1
    assert kinds == {"Polygon", "MultiPolygon"}


def test_watershed_splits_touching_discs_that_components_merge() -> None:
    mask = _disc((64, 96), 32, 30, 16) | _disc((64, 96), 32, 60, 16)
    assert label_mask(mask, InstanceOptions("none")).max() == 1
    split = label_mask(mask, InstanceOptions("watershed"))
    assert split.max() == 2
    assert np.array_equal(split > 0, mask)


def test_min_area_drops_small_objects_and_renumbers() -> None:
    mask = _disc((64, 64), 20, 20, 8)
    mask[50, 50] = True  # a one-pixel speck
    labels = label_mask(mask, InstanceOptions("none", min_area=2))
    assert labels.max() == 1 and not labels[50, 50]
    assert label_mask(mask, InstanceOptions("none", min_area=0)).max() == 2


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"split": "blobs"}, "none, watershed"),
        ({"min_area": -1}, "0 or more"),
        ({"connectivity": 3}, "1 or 2"),
    ],
)
def test_bad_options_name_the_allowed_values(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        InstanceOptions(**options)


def test_label_files_png_then_tiff_past_65535() -> None:
    small = np.arange(12, dtype=np.int32).reshape(3, 4)
    data, media_type = labels_file(small)
    assert media_type == "image/png"
    assert np.array_equal(read_labels(data), small)
    many = np.arange(300 * 300, dtype=np.int32).reshape(300, 300)
    data, media_type = labels_file(many)
    assert media_type == "image/tiff"
    assert np.array_equal(read_labels(data), many)


def test_csv_has_the_table_columns() -> None:
    labels = label_mask(_disc((32, 32), 10, 10, 5))
    rows = object_table(labels, np.full((32, 32), 0.75))
    lines = list(csv.reader(io.StringIO(csv_table(rows))))
    assert tuple(lines[0]) == CSV_COLUMNS
    assert lines[1][:2] == ["1", str(rows[0].area)]
    assert float(lines[1][CSV_COLUMNS.index("mean_probability")]) == 0.75
    assert polygons(np.zeros((4, 4), dtype=np.int32)) == {}
    assert object_table(np.zeros((4, 4), dtype=np.int32), np.zeros((4, 4))) == []


def test_match_objects_counts_pairs_over_half_iou() -> None:
    truth = label_mask(_disc((64, 64), 20, 20, 10) | _disc((64, 64), 45, 45, 10))
    shifted = label_mask(_disc((64, 64), 21, 20, 10))  # one found, one missed
    match = match_objects(truth, shifted)
    assert (match.true_positives, match.false_positives, match.false_negatives) == (1, 0, 1)
    assert match.f1 == pytest.approx(2 / 3)
    assert match_objects(truth, truth).f1 == 1.0


def test_synth_instances_are_the_mask_split_into_nuclei(tmp_path: Path) -> None:
    image, mask = generate_pair(pair_rng(8, 1), 128)
    same_image, same_mask, instances = generate_instances(pair_rng(8, 1), 128)
    assert np.array_equal(image, same_image) and np.array_equal(mask, same_mask)
    assert np.array_equal(instances > 0, mask)
    assert instances.dtype == np.uint16
    assert np.array_equal(np.unique(instances), np.arange(instances.max() + 1))
    # Touching nuclei: fewer connected components than nuclei.
    assert label_mask(mask, InstanceOptions("none")).max() < instances.max()
    write_dataset(tmp_path, n=2, seed=8, size=128, instances=True)
    written = read_labels((tmp_path / "instances" / "0001.png").read_bytes())
    assert np.array_equal(written, instances)


def test_cli_writes_geojson_csv_and_labels(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(
            [
                "synth",
                "--out",
                str(tmp_path / "set"),
                "--n",
                "2",
                "--seed",
                "9",
                "--size",
                "96",
                "--instances",
                "--json",
            ]
        )
        == 0
    )
    capsys.readouterr()
    images = sorted((tmp_path / "set" / "images").glob("*.png"))
    model = str(WEIGHTS / "unet-sigmoid.json")
    counts = {}
    for fmt in ("geojson", "csv", "labels"):
        argv = ["instances", *map(str, images), "--model", model, "--format", fmt]
        assert main([*argv, "--out", str(tmp_path / "out"), "--json"]) == 0
        answer = json.loads(capsys.readouterr().out)
        counts[fmt] = [entry["count"] for entry in answer["files"]]
    assert counts["geojson"] == counts["csv"] == counts["labels"]
    collection = json.loads((tmp_path / "out" / "0000.geojson").read_text())
    assert len(collection["features"]) == counts["geojson"][0]
    labels = read_labels((tmp_path / "out" / "0001.labels.png").read_bytes())
    assert labels.max() == counts["labels"][1]
    rows = list(csv.DictReader((tmp_path / "out" / "0001.csv").open()))
    assert len(rows) == counts["csv"][1]
    assert main(["instances", str(images[0]), "--model", model, "--min-area", "-1"]) == 2
    assert "min_area must be 0 or more" in capsys.readouterr().err


def test_the_table_equals_regionprops_table(
    scored: tuple[np.ndarray, float], monkeypatch: pytest.MonkeyPatch
) -> None:
    from skimage.measure import regionprops_table

    from model.inference.measurements import measure

    scores, threshold = scored
    for split, block_rows in (("none", 256), ("watershed", 256), ("watershed", 7)):
        # Blocks of 7 rows: objects and their borders cut by every block's edges.
        monkeypatch.setattr("model.inference.measurements.BLOCK_ROWS", block_rows)
        labels = label_scores(scores, threshold, InstanceOptions(split))  # type: ignore[arg-type]
        ours = measure(labels, scores, threads=1 if block_rows == 256 else 3)
        theirs = regionprops_table(
            labels,
            intensity_image=scores.astype(np.float64),
            properties=tuple(
                {"centroid-0": "centroid", "centroid-1": "centroid"}.get(k, k.split("-")[0])
                for k in ours
            ),
        )
        assert set(ours) == set(theirs)
        for key, column in theirs.items():
            assert np.allclose(ours[key], column, rtol=1e-12, atol=1e-9), key


def _whole_image_split(mask: np.ndarray) -> np.ndarray:
    """The watershed split in one piece, straight from scikit-image (what the bands must equal)."""
    from scipy import ndimage
    from skimage.feature import peak_local_max
    from skimage.measure import label
    from skimage.segmentation import watershed

    components = label(mask, connectivity=1)
    smooth = ndimage.gaussian_filter(ndimage.distance_transform_edt(mask).astype(np.float32), 1.0)
    peaks = peak_local_max(smooth, min_distance=5, threshold_abs=1.0, exclude_border=False)
    markers = np.zeros(mask.shape, dtype=np.int64)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    split = watershed(-smooth, markers, mask=mask, connectivity=1)
    unseeded = mask & (split == 0)
    split[unseeded] = components[unseeded] + len(peaks)
    return split


def test_banded_split_equals_the_whole_image_split(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bands far smaller than the objects (the halo has to grow) give the same objects."""
    _, mask = generate_pair(pair_rng(4343, 0), 384)
    mask = np.asarray(mask) > 0
    # A large disc and a tall bar: distances beyond the first halo, components taller than a band.
    mask |= _disc(mask.shape, 200, 190, 60)
    mask[20:360, 370:380] = True
    reference = _whole_image_split(mask)
    monkeypatch.setattr("model.inference.watershed.BAND_PIXELS", 16 * mask.shape[1])
    monkeypatch.setattr("model.inference.watershed.BAND_HALO", 2)
    banded = label_mask(mask, InstanceOptions(split="watershed"))
    # Bands and flood groups shared between threads: the same label image, id for id.
    np.testing.assert_array_equal(label_mask(mask, InstanceOptions(split="watershed"), 3), banded)
    assert banded.dtype == np.int32
    assert banded.max() == len(np.unique(reference[reference > 0])) > 50
    # The same partition of the pixels: each banded object is exactly one reference object.
    pairs = np.unique(np.stack([banded[mask], reference[mask]]), axis=1)
    assert pairs.shape[1] == banded.max()
    assert np.array_equal(banded > 0, mask)


def test_banded_seeds_are_peak_local_max_in_its_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """The seeds found band by band are scikit-image's, point for point and in the same order,
    plateaus and seeds closer than the spacing across a band's edge included."""
    from scipy import ndimage
    from skimage.feature import peak_local_max

    from model.inference import watershed

    _, mask = generate_pair(pair_rng(4344, 0), 320)
    mask = np.asarray(mask) > 0
    mask[100:140, 40:200] = True  # a long flat-topped bar: many equal depths
    smooth = ndimage.gaussian_filter(ndimage.distance_transform_edt(mask).astype(np.float32), 1.0)
    # Rounded so that equal depths (ties broken by raster order) are common.
    smooth = np.round(smooth * 2) / 2
    reference = peak_local_max(smooth, min_distance=5, threshold_abs=1.0, exclude_border=False)
    for band_rows in (7, 16, 1000):
        monkeypatch.setattr("model.inference.watershed.BAND_PIXELS", band_rows * smooth.shape[1])
        assert np.array_equal(watershed._seeds(smooth), reference), band_rows
    assert len(reference) > 30
    flat = np.full((40, 40), 3.0, dtype=np.float32)
    assert len(watershed._seeds(flat)) == len(peak_local_max(flat, min_distance=5)) == 0


def test_geojson_written_as_text_is_the_collection_json_dumps_writes(
    scored: tuple[np.ndarray, float],
) -> None:
    """The server's streamed GeoJSON equals `json.dumps` of `feature_collection`, byte for byte."""
    scores, threshold = scored
    labels = label_scores(scores, threshold)
    # A ring with a hole and an object in two pieces (a MultiPolygon) beside the model's objects.
    labels[5:25, 5:25] = labels.max() + 1
    labels[10:15, 10:15] = 0
    labels[40:44, 3:6] = labels[60:62, 2:4] = labels.max() + 1
    rows = object_table(labels, scores)
    properties = {"model": "m", "threshold": threshold}
    expected = json.dumps(
        feature_collection(labels, rows, properties, "nucleus", (1, 2, 3)), separators=(",", ":")
    ).encode()
    assert (
        collection_json(properties, feature_texts(labels, rows, "nucleus", (1, 2, 3))) == expected
    )
    assert b'"MultiPolygon"' in expected

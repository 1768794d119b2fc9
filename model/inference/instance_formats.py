"""The files objects are written as: label images, QuPath-ready GeoJSON and CSV tables.

Polygons come from GDAL's polygonize (`rasterio.features.shapes`): their edges run along pixel
borders, so a polygon rasterised again gives back exactly its object's pixels, holes included.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from model.inference.instances import ObjectRow

PNG_MAX_OBJECTS = 65_535  # a 16-bit PNG's largest label; past it the labels go in a 32-bit TIFF
SEPARATORS = (",", ":")  # compact JSON, as every GeoJSON answer is written
DEFAULT_COLOR = (255, 64, 0)  # the overlay's tint, so outlines look the same everywhere
CSV_COLUMNS = (
    "id",
    "area",
    "centroid_x",
    "centroid_y",
    "bbox_x_min",
    "bbox_y_min",
    "bbox_x_max",
    "bbox_y_max",
    "mean_probability",
    "max_probability",
    "perimeter",
    "equivalent_diameter",
    "touches_border",
)


def labels_file(labels: np.ndarray) -> tuple[bytes, str]:
    """The label image as (bytes, media type): a 16-bit PNG, or a 32-bit TIFF past 65,535."""
    from PIL import Image

    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be a 2-D (H, W) array, not shape {labels.shape}")
    buffer = io.BytesIO()
    if int(labels.max(initial=0)) <= PNG_MAX_OBJECTS:
        Image.fromarray(labels.astype(np.uint16)).save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue(), "image/png"
    import tifffile

    tifffile.imwrite(buffer, labels.astype(np.uint32), compression="zlib")
    return buffer.getvalue(), "image/tiff"


def read_labels(data: bytes) -> np.ndarray:
    """A label image written by `labels_file`, back as an int64 array."""
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        import tifffile

        return np.asarray(tifffile.imread(io.BytesIO(data)), dtype=np.int64)
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)), dtype=np.int64)


def polygons(labels: np.ndarray) -> dict[int, dict[str, Any]]:
    """Each object's outline as a GeoJSON geometry (Polygon, or MultiPolygon when in parts).

    Exterior rings run counterclockwise and holes clockwise in (x, y), as RFC 7946's right-hand
    rule asks; every ring is closed. Coordinates are whole pixels' corners.
    """
    from rasterio.features import shapes

    labels = np.ascontiguousarray(labels, dtype=np.int32)
    parts: dict[int, list[list[list[list[int]]]]] = {}
    # 4-connected pieces: a ring never touches itself at a corner, so every polygon is valid.
    for geometry, value in shapes(labels, mask=labels > 0, connectivity=4):
        rings = [_oriented(ring, exterior=k == 0) for k, ring in enumerate(geometry["coordinates"])]
        parts.setdefault(int(value), []).append(rings)
    outlines = {}
    for key in sorted(parts):
        pieces = parts[key]
        if len(pieces) == 1:
            outlines[key] = {"type": "Polygon", "coordinates": pieces[0]}
        else:
            outlines[key] = {"type": "MultiPolygon", "coordinates": pieces}
    return outlines


def _oriented(ring: Any, exterior: bool) -> list[list[int]]:
    """A ring as [x, y] integer lists, counterclockwise if `exterior`, else clockwise."""
    # Polygonize traces pixel corners of an identity transform: every coordinate is whole.
    return [[int(x), int(y)] for x, y in _right_handed(ring, exterior)]


def _right_handed(ring: Any, exterior: bool) -> Any:
    """The ring counterclockwise if `exterior`, else clockwise (RFC 7946's right-hand rule)."""
    return ring if _counterclockwise(ring) == exterior else ring[::-1]


def _counterclockwise(ring: Sequence[tuple[float, float]]) -> bool:
    """Whether a closed simple ring turns counterclockwise (positive shoelace area).

    Read at its lowest (x, y) vertex, a corner of its convex hull, where the turn's sign is the
    ring's: the comparisons run in C, not a Python loop over every vertex.
    """
    i = ring.index(min(ring[:-1]))
    before, (x, y), after = ring[i - 1] if i else ring[-2], ring[i], ring[i + 1]
    return (x - before[0]) * (after[1] - y) - (y - before[1]) * (after[0] - x) > 0


def feature_collection(
    labels: np.ndarray,
    rows: Sequence[ObjectRow],
    properties: dict[str, Any],
    class_name: str = "foreground",
    color: tuple[int, int, int] = DEFAULT_COLOR,
) -> dict[str, Any]:
    """A FeatureCollection of one detection per object, as QuPath imports them.

    Each Feature's properties hold `id`, `objectType` "detection", `classification` (name and
    RGB colour) and the table's measurements; `properties` (the model, the threshold) go on
    the collection itself.
    """
    outlines = polygons(labels)
    classification = {"name": class_name, "color": list(color)}
    features = [
        {
            "type": "Feature",
            "geometry": outlines[row.id],
            "properties": _feature_properties(row, classification),
        }
        for row in rows
    ]
    return {"type": "FeatureCollection", "properties": dict(properties), "features": features}


def geometry_texts(labels: np.ndarray) -> dict[int, str]:
    """`polygons` written straight to JSON text, one geometry an object: what `json.dumps`
    (separators "," and ":") makes of `polygons(labels)`, without holding every ring as lists."""
    from rasterio.features import shapes

    labels = np.ascontiguousarray(labels, dtype=np.int32)
    parts: dict[int, list[str]] = {}
    for geometry, value in shapes(labels, mask=labels > 0, connectivity=4):
        rings = [_right_handed(ring, k == 0) for k, ring in enumerate(geometry["coordinates"])]
        # Whole-number (x, y) tuples print as "[(3.0, 4.0), ...]": compact JSON integer pairs
        # after four string replacements, done in C rather than a Python loop per vertex.
        text = str(rings).replace(".0", "").replace(" ", "").replace("(", "[").replace(")", "]")
        parts.setdefault(int(value), []).append(text)
    texts = {}
    for key in sorted(parts):
        pieces = parts.pop(key)
        if len(pieces) == 1:
            texts[key] = f'{{"type":"Polygon","coordinates":{pieces[0]}}}'
        else:
            texts[key] = f'{{"type":"MultiPolygon","coordinates":[{",".join(pieces)}]}}'
    return texts


def feature_texts(
    labels: np.ndarray,
    rows: Sequence[ObjectRow],
    class_name: str = "foreground",
    color: tuple[int, int, int] = DEFAULT_COLOR,
) -> list[str]:
    """`feature_collection`'s features, each as its JSON text (compact, as `json.dumps` writes
    it): a 4096 px image's thousands of outlines as text take a tenth of their memory as lists."""
    outlines = geometry_texts(labels)
    classification = {"name": class_name, "color": list(color)}
    features = []
    for row in rows:
        properties = _feature_properties(row, classification)
        features.append(
            f'{{"type":"Feature","geometry":{outlines.pop(row.id)},'
            f'"properties":{json.dumps(properties, separators=SEPARATORS)}}}'
        )
    return features


def collection_json(properties: dict[str, Any], features: Iterable[str]) -> bytes:
    """A FeatureCollection's compact JSON from its properties and its features' JSON texts."""
    head = json.dumps(properties, separators=SEPARATORS)
    body = ",".join(features)
    return f'{{"type":"FeatureCollection","properties":{head},"features":[{body}]}}'.encode()


def _feature_properties(row: ObjectRow, classification: dict[str, Any]) -> dict[str, Any]:
    """One detection's properties, as QuPath reads them."""
    return {
        "id": row.id,
        "objectType": "detection",
        "classification": classification,
        "measurements": {
            "Area px": row.area,
            "Perimeter px": row.perimeter,
            "Mean probability": row.mean_probability,
            "Max probability": row.max_probability,
        },
    }


def csv_table(rows: Sequence[ObjectRow], classes: Sequence[str] | None = None) -> str:
    """The objects table as CSV with a header row, one object a row.

    With `classes` (one name a row: a multi-class model's objects), a `class` column follows `id`.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = list(CSV_COLUMNS)
    if classes is not None:
        header.insert(1, "class")
    writer.writerow(header)
    for k, row in enumerate(rows):
        named = () if classes is None else (classes[k],)
        writer.writerow(
            (
                row.id,
                *named,
                row.area,
                repr(row.centroid[0]),
                repr(row.centroid[1]),
                *row.bbox,
                repr(row.mean_probability),
                repr(row.max_probability),
                repr(row.perimeter),
                repr(row.equivalent_diameter),
                "true" if row.touches_border else "false",
            )
        )
    return buffer.getvalue()

"""Objects, not only pixels: a score map cut at a threshold becomes a label image and a table.

One class's map at a time (a multi-class model's objects are a loop over its classes). The parts
are scipy's `label` for connected components, scikit-image's distance-transform `watershed` to
split touching objects, `regionprops_table`'s measurements.

Coordinates follow the GeoJSON the objects are also written as: x to the right, y down, pixel
(row r, column c) covering the square [c, c + 1] x [r, r + 1], so its centre is (c + 0.5, r + 0.5).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np

from model.inference.watershed import bands, connected_components, row_bands, split_touching

Split = Literal["none", "watershed"]
SPLITS: tuple[str, ...] = get_args(Split)
CONNECTIVITIES = (1, 2)  # 1: edge neighbours only (4-connected); 2: corners too (8-connected)
DEFAULT_SPLIT: Split = "watershed"


@dataclass(frozen=True)
class InstanceOptions:
    """How a mask becomes objects: the split, the smallest kept object and the connectivity."""

    split: Split = DEFAULT_SPLIT
    min_area: int = 0  # objects with fewer pixels are dropped (0 and 1 keep every object)
    connectivity: int = 1

    def __post_init__(self) -> None:
        """Refuse options no labelling can follow, naming the allowed values."""
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {self.split!r}")
        if self.min_area < 0:
            raise ValueError(f"min_area must be 0 or more pixels, not {self.min_area}")
        if self.connectivity not in CONNECTIVITIES:
            raise ValueError(f"connectivity must be 1 or 2, not {self.connectivity}")


@dataclass(frozen=True)
class ObjectRow:
    """One object's measurements (pixels; x right, y down)."""

    id: int
    area: int
    centroid: tuple[float, float]  # (x, y) of the pixel centres' mean
    bbox: tuple[int, int, int, int]  # (x_min, y_min, x_max, y_max), max exclusive
    mean_probability: float
    max_probability: float
    perimeter: float
    equivalent_diameter: float
    touches_border: bool

    def as_dict(self) -> dict[str, Any]:
        """The row as plain JSON values."""
        return {
            "id": self.id,
            "area": self.area,
            "centroid": list(self.centroid),
            "bbox": list(self.bbox),
            "mean_probability": self.mean_probability,
            "max_probability": self.max_probability,
            "perimeter": self.perimeter,
            "equivalent_diameter": self.equivalent_diameter,
            "touches_border": self.touches_border,
        }


def label_mask(
    mask: np.ndarray, options: InstanceOptions | None = None, threads: int = 1
) -> np.ndarray:
    """The objects of a boolean (H, W) mask as an int32 label image: 0 background, 1..N.

    Every foreground pixel belongs to an object unless `min_area` drops it, so with min_area 0
    the labels' union is the mask. Ids run 1..N in raster order of each object's first pixel.
    The split may run on up to `threads` threads; the objects do not depend on how many.
    """
    options = options or InstanceOptions()
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be a 2-D (H, W) array, not shape {mask.shape}")
    if options.split == "watershed":
        labels = split_touching(mask, options.connectivity, threads)
    else:
        labels = connected_components(mask, options.connectivity)
    if options.min_area > 1 and labels.any():
        small = _areas(labels) < options.min_area
        small[0] = False
        for band in bands(labels):
            band[small[band]] = 0
    # Renumber in raster order so that ids do not depend on how the split seeded them; labels
    # left empty (dropped, unseeded) sort last, so the objects present get exactly 1..N.
    first = _first_pixels(labels)
    order = np.zeros(first.size + 1, dtype=np.int32)
    order[np.argsort(first, kind="stable") + 1] = np.arange(1, first.size + 1, dtype=np.int32)
    # In place, a band at a time: `take` holds its indices as int64, twice the labels' size.
    for band in bands(labels):
        np.take(order, band, out=band, mode="clip")
    return labels


def _areas(labels: np.ndarray) -> np.ndarray:
    """Each label's pixel count, index 0 the background's (counted in bands: `bincount` would
    hold the whole plane as int64)."""
    areas = np.zeros(int(labels.max(initial=0)) + 1, dtype=np.int64)
    for band in bands(labels):
        counts = np.bincount(band.ravel())
        areas[: counts.size] += counts
    return areas


def label_scores(
    scores: np.ndarray, threshold: float, options: InstanceOptions | None = None, threads: int = 1
) -> np.ndarray:
    """The objects of one class's score map cut at `threshold` (foreground: score >= cut)."""
    return label_mask(np.asarray(scores) >= threshold, options, threads)


def count_objects(
    scores: np.ndarray, threshold: float, options: InstanceOptions | None = None, threads: int = 1
) -> int:
    """How many objects `label_scores` finds at `threshold`."""
    return int(label_scores(scores, threshold, options, threads).max(initial=0))


def _first_pixels(labels: np.ndarray) -> np.ndarray:
    """The raster index of each label's first pixel, for labels 1..max (absent: a large value).

    Band by band from the bottom up, each band's pixels backwards, so that the first pixel is
    the last one written; a band's indices, not the whole image's, are held at once.
    """
    n = int(labels.max(initial=0))
    width = labels.shape[1]
    first = np.full(n + 1, labels.size, dtype=np.int64)
    for top, bottom in reversed(row_bands(labels.shape)):
        band = labels[top:bottom].ravel()  # whole rows: a view
        at = np.flatnonzero(band)[::-1]
        first[band[at]] = at + top * width
    return first[1:]


def object_table(labels: np.ndarray, scores: np.ndarray, threads: int = 1) -> list[ObjectRow]:
    """Each object's measurements, in id order; scores give the mean and max probability.

    Labels must run 1..N without gaps, as `label_mask` numbers them; `threads` may share the
    measuring.
    """
    from model.inference.measurements import measure

    labels = np.asarray(labels)
    if labels.shape != np.shape(scores):
        raise ValueError(f"labels {labels.shape} and scores {np.shape(scores)} differ in size")
    if not labels.any():
        return []
    table = measure(labels, scores, threads)
    height, width = labels.shape
    rows = []
    for i in range(len(table["label"])):
        top, left = int(table["bbox-0"][i]), int(table["bbox-1"][i])
        bottom, right = int(table["bbox-2"][i]), int(table["bbox-3"][i])
        rows.append(
            ObjectRow(
                id=int(table["label"][i]),
                area=int(table["area"][i]),
                centroid=(float(table["centroid-1"][i]) + 0.5, float(table["centroid-0"][i]) + 0.5),
                bbox=(left, top, right, bottom),
                mean_probability=float(table["intensity_mean"][i]),
                max_probability=float(table["intensity_max"][i]),
                perimeter=float(table["perimeter"][i]),
                equivalent_diameter=float(table["equivalent_diameter_area"][i]),
                touches_border=top == 0 or left == 0 or bottom == height or right == width,
            )
        )
    return rows


@dataclass(frozen=True)
class ObjectMatch:
    """Predicted objects against true ones, matched one to one at an IoU cut-off."""

    true_positives: int
    false_positives: int
    false_negatives: int

    @property
    def f1(self) -> float:
        """Object F1: 2 TP / (2 TP + FP + FN); 1 when both sides are empty."""
        denominator = 2 * self.true_positives + self.false_positives + self.false_negatives
        return 1.0 if denominator == 0 else 2 * self.true_positives / denominator


def match_objects(truth: np.ndarray, predicted: np.ndarray, iou: float = 0.5) -> ObjectMatch:
    """Match two label images' objects: a pair counts when their IoU exceeds `iou` (>= 0.5).

    Above 0.5 an object can overlap at most one other that much, so the matching is unique
    without an assignment solver.
    """
    if iou < 0.5:
        raise ValueError(f"iou must be at least 0.5 for a unique matching, not {iou}")
    truth, predicted = np.asarray(truth, dtype=np.int64), np.asarray(predicted, dtype=np.int64)
    n_true, n_pred = int(truth.max(initial=0)), int(predicted.max(initial=0))
    both = (truth > 0) & (predicted > 0)
    pairs = np.bincount(
        truth[both] * (n_pred + 1) + predicted[both], minlength=(n_true + 1) * (n_pred + 1)
    ).reshape(n_true + 1, n_pred + 1)
    true_area = np.bincount(truth.ravel(), minlength=n_true + 1)
    pred_area = np.bincount(predicted.ravel(), minlength=n_pred + 1)
    union = true_area[:, None] + pred_area[None, :] - pairs
    matched = (pairs > iou * np.maximum(union, 1))[1:, 1:]
    # Ids missing from a label image (area 0) are not objects.
    real_true, real_pred = int((true_area[1:] > 0).sum()), int((pred_area[1:] > 0).sum())
    tp = int(matched.sum())
    return ObjectMatch(tp, real_pred - tp, real_true - tp)

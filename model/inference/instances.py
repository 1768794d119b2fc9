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
from scipy import ndimage

Split = Literal["none", "watershed"]
SPLITS: tuple[str, ...] = get_args(Split)
CONNECTIVITIES = (1, 2)  # 1: edge neighbours only (4-connected); 2: corners too (8-connected)
# The watershed's seeds: maxima of the (lightly blurred) distance to the background at least
# SEED_DISTANCE px apart and SEED_DEPTH px inside the object. Chosen on synthetic nuclei of
# radius 6-18 px (docs/instances.md): 3 px found 4% more nuclei but 50% more false objects.
SEED_DISTANCE = 5
SEED_DEPTH = 1.0
DEFAULT_SPLIT: Split = "watershed"
# The split runs in bands of rows so that its memory does not grow with the image: BAND_ROWS a
# band, and a first BAND_HALO rows of context either side for the distance transform.
BAND_ROWS = 256
BAND_HALO = 32


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


def label_mask(mask: np.ndarray, options: InstanceOptions | None = None) -> np.ndarray:
    """The objects of a boolean (H, W) mask as an int32 label image: 0 background, 1..N.

    Every foreground pixel belongs to an object unless `min_area` drops it, so with min_area 0
    the labels' union is the mask. Ids run 1..N in raster order of each object's first pixel.
    """
    options = options or InstanceOptions()
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be a 2-D (H, W) array, not shape {mask.shape}")
    labels = (
        _watershed(mask, options) if options.split == "watershed" else _components(mask, options)
    )
    if options.min_area > 1 and labels.any():
        areas = np.bincount(labels.ravel())
        small = areas < options.min_area
        small[0] = False
        labels[small[labels]] = 0
    # Renumber in raster order so that ids do not depend on how the split seeded them; labels
    # left empty (dropped, unseeded) sort last, so the objects present get exactly 1..N.
    first = _first_pixels(labels)
    order = np.zeros(first.size + 1, dtype=np.int32)
    order[np.argsort(first, kind="stable") + 1] = np.arange(1, first.size + 1, dtype=np.int32)
    # In place, and unbuffered (mode "raise" would copy the plane): every label indexes `order`.
    return np.take(order, labels, out=labels, mode="clip")


def _components(mask: np.ndarray, options: InstanceOptions) -> np.ndarray:
    """The mask's connected components as int32 labels, numbered in raster order."""
    # scipy's label, not scikit-image's: the same components, straight into int32 (no int64 plane).
    structure = ndimage.generate_binary_structure(2, options.connectivity)
    components = np.empty(mask.shape, dtype=np.int32)
    ndimage.label(mask, structure=structure, output=components)
    return components


def label_scores(
    scores: np.ndarray, threshold: float, options: InstanceOptions | None = None
) -> np.ndarray:
    """The objects of one class's score map cut at `threshold` (foreground: score >= cut)."""
    return label_mask(np.asarray(scores) >= threshold, options)


def count_objects(
    scores: np.ndarray, threshold: float, options: InstanceOptions | None = None
) -> int:
    """How many objects `label_scores` finds at `threshold`."""
    return int(label_scores(scores, threshold, options).max(initial=0))


def _watershed(mask: np.ndarray, options: InstanceOptions) -> np.ndarray:
    """Touching objects split along the valleys of the distance to the background.

    Memory stays a few int32/float32 planes: the distance transform and the flooding run in
    bands of rows (`_distance`, `_flood`), each giving exactly what the whole image would, and
    the split is written over the components it splits.
    """
    from skimage.feature import peak_local_max

    if not mask.any():
        return _components(mask, options)
    smooth = _distance(mask)
    # A light blur keeps one seed per nucleus when a ragged border dents the distance map.
    ndimage.gaussian_filter(smooth, 1.0, output=smooth)
    # No `labels=`: per-component search is 3x slower, and the unseeded fallback below already
    # gives a component whose peak lost to a neighbour's its own object.
    peaks = peak_local_max(
        smooth, min_distance=SEED_DISTANCE, threshold_abs=SEED_DEPTH, exclude_border=False
    )
    # Labelled after the seeds are found, so that the components' plane and the seed search's
    # temporaries are never held at once.
    labels = _components(mask, options)
    _flood(np.negative(smooth, out=smooth), peaks, labels, options.connectivity)
    return labels


def _distance(mask: np.ndarray) -> np.ndarray:
    """The float32 distance of each pixel to the background, computed in bands of rows.

    A band's transform over a window reaching `halo` rows beyond it is exact wherever it is at
    most `halo`: any background pixel outside the window is further away than that. Where it is
    not, the window grows until it is, so the result is the whole image's transform.
    """
    height = mask.shape[0]
    out = np.empty(mask.shape, dtype=np.float32)
    for top in range(0, height, BAND_ROWS):
        bottom = min(height, top + BAND_ROWS)
        halo = BAND_HALO
        while True:
            first, last = max(0, top - halo), min(height, bottom + halo)
            window = mask[first:last]
            whole = first == 0 and last == height
            # Without background in the window scipy measures from outside it: never exact.
            if whole or not window.all():
                core = ndimage.distance_transform_edt(window)[top - first : bottom - first]
                if whole or core.max(initial=0) <= halo:
                    break
            halo *= 2
        out[top:bottom] = core
    return out


def _flood(image: np.ndarray, peaks: np.ndarray, labels: np.ndarray, connectivity: int) -> None:
    """scikit-image's `watershed` of `image` from seeds `peaks` (k-th: marker k), band by band.

    `labels` holds the connected components and receives the split in place: marker k's basin
    is k; a component no seed reaches (too thin to hold one) becomes its own id + len(peaks), so
    the labels' union stays the mask. A flood never leaves its
    component (the mask's own connectivity), so each group of whole components, numbered in
    raster order, floods alone over the rows it spans.
    """
    from skimage.segmentation import watershed

    boxes = ndimage.find_objects(labels)
    # Seeds sorted by row, to hand each band its own; marker ids stay their place in `peaks`.
    ids = np.arange(1, len(peaks) + 1, dtype=np.int32)
    by_row = np.argsort(peaks[:, 0], kind="stable") if len(peaks) else ids[:0]
    seed_rows = peaks[by_row, 0] if len(peaks) else ids[:0]
    start = 0
    while start < len(boxes):
        top, bottom = boxes[start][0].start, boxes[start][0].stop
        stop = start + 1
        while stop < len(boxes) and max(bottom, boxes[stop][0].stop) - top <= BAND_ROWS:
            bottom = max(bottom, boxes[stop][0].stop)
            stop += 1
        band = labels[top:bottom]
        # Components start+1..stop; pixels of earlier bands hold their (negated) split already.
        own = (band > start) & (band <= stop)
        markers = np.zeros(band.shape, dtype=np.int32)
        first, last = np.searchsorted(seed_rows, (top, bottom))
        chosen = by_row[first:last]
        markers[peaks[chosen, 0] - top, peaks[chosen, 1]] = ids[chosen]
        flooded = watershed(image[top:bottom], markers, mask=own, connectivity=connectivity)
        unseeded = own & (flooded == 0)
        flooded[unseeded] = band[unseeded] + len(peaks)
        # Negated until every band is done, so later bands' components stay recognisable.
        band[own] = -flooded[own]
        start = stop
    np.negative(labels, out=labels)


def _first_pixels(labels: np.ndarray) -> np.ndarray:
    """The raster index of each label's first pixel, for labels 1..max (absent: a large value)."""
    n = int(labels.max(initial=0))
    flat = labels.ravel()
    first = np.full(n + 1, flat.size, dtype=np.int64)
    nonzero = np.flatnonzero(flat)
    # Reversed so that the first occurrence is the one that sticks.
    first[flat[nonzero[::-1]]] = nonzero[::-1]
    return first[1:]


def object_table(labels: np.ndarray, scores: np.ndarray) -> list[ObjectRow]:
    """Each object's measurements, in id order; scores give the mean and max probability.

    Labels must run 1..N without gaps, as `label_mask` numbers them.
    """
    from model.inference.measurements import measure

    labels = np.asarray(labels)
    if labels.shape != np.shape(scores):
        raise ValueError(f"labels {labels.shape} and scores {np.shape(scores)} differ in size")
    if not labels.any():
        return []
    table = measure(labels, scores)
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

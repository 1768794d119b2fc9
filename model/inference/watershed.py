"""A mask's objects: its connected components, and the watershed that splits touching ones.

What it computes is scikit-image's recipe on the whole image: the Euclidean distance of each
foreground pixel to the background, lightly blurred; `peak_local_max` seeds on it; `watershed`
of its negation from those seeds within the mask. It computes it in bands of whole rows, each
giving exactly what the whole image would there, so that its memory stays a few planes whatever
the image's size, and so that a request's idle cores can share the bands (`threads`): scipy's
and scikit-image's loops release the GIL.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
from scipy import ndimage

# The seeds: maxima of the (lightly blurred) distance to the background at least SEED_DISTANCE
# px apart and SEED_DEPTH px inside the object. Chosen on synthetic nuclei of radius 6-18 px
# (docs/instances.md): 3 px found 4% more nuclei but 50% more false objects.
SEED_DISTANCE = 5
SEED_DEPTH = 1.0
# The distance map is blurred first: a light blur keeps one seed per nucleus when a ragged
# border dents it. scipy's Gaussian reaches int(4 sigma + 0.5) rows (its default truncate).
BLUR = 1.0
BLUR_REACH = int(4.0 * BLUR + 0.5)
# About BAND_PIXELS a band (a 1024 px image is one band, a 4096 px one 16), and a first
# BAND_HALO rows of context either side for the distance transform.
BAND_PIXELS = 1 << 20
BAND_HALO = 32

Item = TypeVar("Item")
Result = TypeVar("Result")


def band_rows(shape: tuple[int, ...], threads: int = 1) -> int:
    """How many rows make one band of an (H, W) plane: BAND_PIXELS' worth, and no more than
    an equal share of the rows for each of `threads`."""
    height, width = shape[0], shape[1]
    rows = max(1, BAND_PIXELS // max(1, width))
    if threads > 1:
        rows = min(rows, -(-height // threads))
    return max(1, rows)


def row_bands(shape: tuple[int, ...], threads: int = 1) -> list[tuple[int, int]]:
    """(top, bottom) of each band of rows of an (H, W) plane, top to bottom."""
    height, rows = shape[0], band_rows(shape, threads)
    return [(top, min(height, top + rows)) for top in range(0, height, rows)]


def bands(plane: np.ndarray) -> list[np.ndarray]:
    """Views of a band of rows each, top to bottom, for passes with small temporaries."""
    return [plane[top:bottom] for top, bottom in row_bands(plane.shape)]


def connected_components(mask: np.ndarray, connectivity: int) -> np.ndarray:
    """The mask's connected components as int32 labels 1..N, numbered in raster order
    (`connectivity` 1: edge neighbours only; 2: corners too)."""
    # scipy's label, not scikit-image's: the same components, straight into int32 (no int64 plane).
    structure = ndimage.generate_binary_structure(2, connectivity)
    components = np.empty(mask.shape, dtype=np.int32)
    ndimage.label(mask, structure=structure, output=components)
    return components


def split_touching(mask: np.ndarray, connectivity: int, threads: int = 1) -> np.ndarray:
    """The mask's objects, touching ones split, as int32 labels (ids not in raster order).

    A component no seed reaches (too thin to hold one) stays whole, so the labels' union is the
    mask.
    """
    if not mask.any():
        return connected_components(mask, connectivity)
    smooth = _distance(mask, threads)
    peaks = _seeds(smooth, threads)
    # Labelled after the seeds are found, so that the components' plane and the seed search's
    # temporaries are never held at once.
    labels = connected_components(mask, connectivity)
    _flood(np.negative(smooth, out=smooth), peaks, labels, connectivity, threads)
    return labels


def parallel_map(
    work: Callable[[Item], Result], items: Sequence[Item], threads: int
) -> list[Result]:
    """`work` of each item, in order; on up to `threads` threads when there are several."""
    if threads <= 1 or len(items) <= 1:
        return [work(item) for item in items]
    with ThreadPoolExecutor(min(threads, len(items)), thread_name_prefix="bands") as pool:
        return list(pool.map(work, items))


def _distance(mask: np.ndarray, threads: int = 1) -> np.ndarray:
    """The float32 distance of each pixel to the background, lightly blurred (a Gaussian of
    sigma BLUR), computed in bands of rows.

    A band's transform over a window reaching `halo` rows beyond it is exact wherever it is at
    most `halo`: any background pixel outside the window is further away than that. Where it is
    not, the window grows until it is, so the result is the whole image's transform. The blur
    of a band needs the exact distance BLUR_REACH rows either side of it, and no more.
    """
    height = mask.shape[0]
    out = np.empty(mask.shape, dtype=np.float32)

    def band(rows: tuple[int, int]) -> None:
        top, bottom = rows
        # The rows whose exact distance the band's blur reads.
        above, below = max(0, top - BLUR_REACH), min(height, bottom + BLUR_REACH)
        halo = BAND_HALO
        while True:
            first, last = max(0, above - halo), min(height, below + halo)
            window = mask[first:last]
            whole = first == 0 and last == height
            # Without background in the window scipy measures from outside it: never exact.
            if whole or not window.all():
                exact = ndimage.distance_transform_edt(window)[above - first : below - first]
                if whole or exact.max(initial=0) <= halo:
                    break
            halo *= 2
        blurred = ndimage.gaussian_filter(exact.astype(np.float32), BLUR)
        out[top:bottom] = blurred[top - above : bottom - above]

    parallel_map(band, row_bands(mask.shape, threads), threads)
    return out


def _seeds(smooth: np.ndarray, threads: int = 1) -> np.ndarray:
    """The watershed's seeds: scikit-image's `peak_local_max(smooth, min_distance=SEED_DISTANCE,
    threshold_abs=SEED_DEPTH, exclude_border=False)`, its maximum filter run in bands of rows.

    A pixel is a candidate when it is the maximum of the (2 SEED_DISTANCE + 1)² square around it
    and deeper than SEED_DEPTH; a band's candidates need only SEED_DISTANCE rows either side.
    Candidates are then kept from the deepest down unless a kept one lies closer than
    SEED_DISTANCE (Chebyshev), as `peak_local_max` keeps them, in its order.
    """
    height = smooth.shape[0]
    if smooth.min() == smooth.max():  # a flat map has no peaks (nor has it for scikit-image)
        return np.empty((0, 2), dtype=np.intp)
    reach = SEED_DISTANCE

    def band(rows: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        top, bottom = rows
        first, last = max(0, top - reach), min(height, bottom + reach)
        window = smooth[first:last]
        highest = ndimage.maximum_filter(window, size=2 * reach + 1, mode="nearest")
        core = window[top - first : bottom - first]
        row, column = np.nonzero(
            (core == highest[top - first : bottom - first]) & (core > SEED_DEPTH)
        )
        return row + top, column, core[row, column]

    found = parallel_map(band, row_bands(smooth.shape, threads), threads)
    candidates = np.stack(
        [np.concatenate([f[0] for f in found]), np.concatenate([f[1] for f in found])], axis=1
    )
    # Deepest first; equal depths in raster order, as peak_local_max sorts them.
    depths = np.concatenate([f[2] for f in found])
    return _spaced(candidates[np.argsort(-depths, kind="stable")], reach)


def _spaced(points: np.ndarray, spacing: int) -> np.ndarray:
    """`points` (integer, in order of preference) less each one closer than `spacing` (Chebyshev)
    to a point kept before it: `peak_local_max`'s `min_distance` rule."""
    from scipy.spatial import cKDTree

    if len(points) == 0:
        return points
    # Integer coordinates: closer than `spacing` means at most spacing - 1 apart.
    neighbours = cKDTree(points).query_ball_point(points, r=spacing - 0.5, p=np.inf)
    dropped = np.zeros(len(points), dtype=bool)
    for i, near in enumerate(neighbours):
        if not dropped[i]:  # kept: it drops its neighbours (the earlier ones are dropped already)
            dropped[near] = True
            dropped[i] = False
    return points[~dropped]


def _flood(
    image: np.ndarray, peaks: np.ndarray, labels: np.ndarray, connectivity: int, threads: int = 1
) -> None:
    """scikit-image's `watershed` of `image` from seeds `peaks` (k-th: marker k), where it splits.

    `labels` holds the connected components and receives the split in place: marker k's basin
    is k; a component no seed reaches becomes its own id + len(peaks), so the labels' union
    stays the mask. A flood never leaves its component (the mask's own connectivity), so a
    component with one seed is that seed's basin whole, and only those with several are
    flooded: each group of them, numbered in raster order, alone over the box it spans (a band's
    rows at most, unless one component is taller).
    """
    from skimage.segmentation import watershed

    count = len(peaks)
    ids = np.arange(1, count + 1, dtype=np.int32)
    boxes = ndimage.find_objects(labels)
    # Each seed's component (0 for a seed off the mask, which no flood reaches).
    seeded = labels[peaks[:, 0], peaks[:, 1]] if count else ids[:0]
    seeds_in = np.bincount(seeded, minlength=len(boxes) + 1)
    seeds_in[0] = 0
    # The answer of every component that needs no flood, negated until the floods are done so
    # that the components still to flood (kept positive) stay recognisable.
    final = -np.arange(count, count + len(boxes) + 1, dtype=np.int32)
    final[0] = 0
    single = seeds_in[seeded] == 1
    final[seeded[single]] = -ids[single]
    several = np.flatnonzero(seeds_in >= 2)
    final[several] = several
    for band in bands(labels):
        np.take(final, band, out=band, mode="clip")
    # Seeds sorted by row, to hand each group its own; marker ids stay their place in `peaks`.
    by_row = np.argsort(peaks[:, 0], kind="stable") if count else ids[:0]
    seed_rows = peaks[by_row, 0] if count else ids[:0]

    # The floods run at once on threads; the label plane is read and written by one at a time
    # (reads of it beside another thread's masked writes lost pixels in about 1 run in 100).
    touching = threading.Lock()

    def flood(group: tuple[int, int, int, int, int, int]) -> None:
        low, high, top, bottom, left, right = group
        box = labels[top:bottom, left:right]
        with touching:
            own = (box >= low) & (box <= high)  # the group's components: positive, in range
        markers = np.zeros(box.shape, dtype=np.int32)
        first, last = np.searchsorted(seed_rows, (top, bottom))
        chosen = by_row[first:last]
        chosen = chosen[(peaks[chosen, 1] >= left) & (peaks[chosen, 1] < right)]
        markers[peaks[chosen, 0] - top, peaks[chosen, 1] - left] = ids[chosen]
        flooded = watershed(
            image[top:bottom, left:right], markers, mask=own, connectivity=connectivity
        )
        with touching:
            box[own] = -flooded[own]  # every pixel is reached: each component holds a seed

    parallel_map(flood, _groups(several, boxes, band_rows(labels.shape, threads)), threads)
    for band in bands(labels):
        np.negative(band, out=band)


def _groups(
    components: np.ndarray, boxes: Sequence[tuple[slice, ...] | None], rows_at_most: int
) -> list[tuple[int, int, int, int, int, int]]:
    """Consecutive `components` (sorted ids) grouped while their boxes span at most
    `rows_at_most` rows: (first id, last id, top, bottom, left, right) of each group."""
    groups = []
    start = 0
    while start < len(components):
        rows, columns = boxes[components[start] - 1]
        top, bottom, left, right = rows.start, rows.stop, columns.start, columns.stop
        stop = start + 1
        while stop < len(components):
            rows, columns = boxes[components[stop] - 1]
            if max(bottom, rows.stop) - top > rows_at_most:
                break
            bottom = max(bottom, rows.stop)
            left, right = min(left, columns.start), max(right, columns.stop)
            stop += 1
        low, high = int(components[start]), int(components[stop - 1])
        groups.append((low, high, top, bottom, left, right))
        start = stop
    return groups

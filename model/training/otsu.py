"""Otsu's global threshold: the classical, model-free baseline a U-Net has to beat."""

from __future__ import annotations

import numpy as np

BINS = 256


def otsu_threshold(image: np.ndarray) -> float:
    """The Otsu threshold of `image` in its own units; foreground is `image >= threshold`."""
    values = np.asarray(image)
    values = values[np.isfinite(values)] if values.dtype.kind == "f" else values.ravel()
    if values.size == 0:
        raise ValueError("otsu_threshold needs at least one finite pixel")
    lo, hi = values.min().item(), values.max().item()
    if lo == hi:
        return float(lo)
    if values.dtype.kind in "biu" and hi - lo < BINS:
        # One bin per integer level, so an 8-bit image gets the textbook threshold exactly.
        counts = np.bincount((values.astype(np.int64) - int(lo)).ravel()).astype(np.float64)
        edges = lo + np.arange(counts.size + 1, dtype=np.float64)
    else:
        counts, edges = np.histogram(values.astype(np.float64), bins=BINS, range=(lo, hi))
        counts = counts.astype(np.float64)
    centres = edges[:-1] if values.dtype.kind in "biu" else (edges[:-1] + edges[1:]) / 2
    p = counts / counts.sum()
    # Split k puts bins [0, k) in the background; k = 1 .. n-1 leaves both classes non-empty.
    weight = np.cumsum(p)[:-1]
    mass = np.cumsum(p * centres)[:-1]
    total = mass[-1] + p[-1] * centres[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total * weight - mass) ** 2 / (weight * (1.0 - weight))
    between = np.nan_to_num(between, nan=-1.0)
    # Empty bins between two modes tie; the middle of the tie sits best between the modes.
    ties = np.flatnonzero(between == between.max())
    split = int(ties[ties.size // 2]) + 1
    return float(edges[split])


def otsu_mask(image: np.ndarray) -> np.ndarray:
    """Foreground where `image` is at or above its Otsu threshold (bright objects on dark)."""
    values = np.asarray(image)
    return np.asarray(values >= otsu_threshold(values), dtype=bool)

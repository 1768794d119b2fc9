"""The multiclass decision rule and the Dice it scores, as pure functions on arrays.

A pixel takes class k (label k + 1) when ``p_k >= t_k`` and ``p_k`` is the largest among the
classes that pass; a pixel where no class passes is background (label 0). Ties go to the class
listed first, as ``np.argmax`` breaks them. With every ``t_k`` at or below the lowest score this
is the argmax over the K foreground classes; the "plain argmax" a softmax model is usually read
with also weighs the background channel (`argmax_labels`).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from model.errors import CalibrationError


def _label_dtype(n_classes: int) -> type[np.unsignedinteger]:
    return np.uint8 if n_classes < 256 else np.uint16


def decide(probabilities: ArrayLike, thresholds: ArrayLike) -> NDArray[np.unsignedinteger]:
    """Labels (H, W) from class maps (K, H, W) and one threshold per class, by the stated rule."""
    p = np.asarray(probabilities)
    t = np.asarray(thresholds, dtype=np.float64)
    if p.ndim < 2 or t.shape != (p.shape[0],):
        raise CalibrationError(
            f"{t.size} threshold(s) for class maps of shape {p.shape}; give one threshold per "
            "class and maps shaped (K, H, W)"
        )
    # Compared in float64: a float32 map meets a float64 threshold exactly (see the report).
    passing = p >= t.reshape((-1,) + (1,) * (p.ndim - 1))
    competing = np.where(passing, p, -np.inf)
    winner = np.argmax(competing, axis=0)
    labels = np.where(passing.any(axis=0), winner + 1, 0)
    return labels.astype(_label_dtype(p.shape[0]))


def argmax_labels(
    probabilities: ArrayLike, background: ArrayLike | None = None
) -> NDArray[np.unsignedinteger]:
    """Plain argmax over background and classes: 0 where the background's share is largest.

    `background` is the background channel's map; without it, ``1 - sum(p)`` (a softmax's).
    """
    p = np.asarray(probabilities)
    if background is None:
        background = 1.0 - p.sum(axis=0, dtype=np.float64)
    stacked = np.concatenate([np.asarray(background, dtype=np.float64)[None], p], axis=0)
    return np.argmax(stacked, axis=0).astype(_label_dtype(p.shape[0]))


def confusion(truth: ArrayLike, predicted: ArrayLike, n_classes: int) -> NDArray[np.int64]:
    """Pixel counts (K + 1, K + 1): row the true label, column the predicted one."""
    y = np.asarray(truth, dtype=np.int64).reshape(-1)
    z = np.asarray(predicted, dtype=np.int64).reshape(-1)
    size = n_classes + 1
    return np.bincount(y * size + z, minlength=size * size).reshape(size, size)


def dice_per_class(matrix: NDArray[np.integer]) -> NDArray[np.float64]:
    """Dice of each class (K,) from a confusion matrix (1.0: nothing to find and nothing found)."""
    m = np.asarray(matrix, dtype=np.float64)
    tp = np.diag(m)[1:]
    fp = m[:, 1:].sum(axis=0) - tp
    fn = m[1:, :].sum(axis=1) - tp
    denominator = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, 2 * tp / denominator, 1.0)

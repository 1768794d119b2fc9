"""Input normalisation: how a decoded image's pixel values become the network's input.

A model card's `input` section says it. Statistics (min/max, percentiles, mean/std) are taken
over the whole image, never per tile, so a tiled image is normalised exactly like the same image
served whole; serving, calibration, evaluation and training all call `normalize` on the decoded
image, so a model sees the same numbers everywhere.

- `dtype`: integers divided by their type's maximum, floats as they are (the rules of
  `model.data.decoding.to_unit`); an image that uses a small part of a 16-bit range stays dark.
- `minmax`: the image's own minimum to 0 and maximum to 1.
- `percentile`: the image's `low` and `high` percentiles to 0 and 1, unclipped (as csbdeep's
  `normalize` does), so a few hot pixels do not set the scale.
- `zscore`: zero mean and unit standard deviation over the image.
- `fixed`: `dtype` first, then `(x - mean[c]) / std[c]` per channel (ImageNet-style encoders).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

Method = Literal["dtype", "minmax", "percentile", "zscore", "fixed"]
_TINY = 1e-12  # a constant image has no spread to divide by: it becomes 0


class Normalize(BaseModel):
    """How pixel values are scaled; `method` picks the rule, the other fields parametrise it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Method = "dtype"
    low: float = Field(default=1.0, ge=0.0, le=100.0, description="percentile: lower percentile")
    high: float = Field(default=99.8, ge=0.0, le=100.0, description="percentile: upper percentile")
    mean: tuple[float, ...] | None = Field(default=None, description="fixed: per-channel mean")
    std: tuple[float, ...] | None = Field(default=None, description="fixed: per-channel std")

    @model_validator(mode="after")
    def _consistent(self) -> Normalize:
        if self.method == "percentile" and self.low >= self.high:
            raise ValueError(f"percentile needs low < high, got {self.low} and {self.high}")
        if self.method == "fixed":
            if not self.mean or not self.std or len(self.mean) != len(self.std):
                raise ValueError("fixed needs 'mean' and 'std' lists of one value per channel")
            if min(self.std) <= 0:
                raise ValueError("fixed needs every 'std' above 0")
        return self

    @property
    def scales_by_dtype(self) -> bool:
        """Whether the pixel type's maximum scales the image first (dtype and fixed)."""
        return self.method in ("dtype", "fixed")


class ImageInput(BaseModel):
    """A model card's `input`: how many channels, in which order, normalised how."""

    model_config = ConfigDict(extra="allow", frozen=True)

    channels: int = Field(default=1, ge=1, description="channels the network takes")
    order: Literal["RGB", "BGR"] = Field(default="RGB", description="colour channel order")
    normalize: Normalize = Field(default_factory=lambda: Normalize())

    @model_validator(mode="after")
    def _channels_match(self) -> ImageInput:
        mean = self.normalize.mean
        if self.normalize.method == "fixed" and mean and len(mean) != self.channels:
            raise ValueError(
                f"normalize.mean has {len(mean)} values but the input has {self.channels} channels"
            )
        return self


def unit_magnitude(array: np.ndarray) -> np.ndarray:
    """`array` as float32 divided by its largest magnitude (a constant zero image stays 0).

    The statistics-based methods do not depend on the image's scale, and dividing first keeps
    values near the float64 limits from overflowing float32 or `high - low`.
    """
    values = array.astype(np.float64)
    scale = float(np.abs(values).max()) if values.size else 0.0
    if scale > 0:
        values /= scale
    return values.astype(np.float32)


def is_narrow_unsigned(array: np.ndarray) -> bool:
    """Whether `array` holds 8- or 16-bit unsigned integers (or booleans): a camera's pixels."""
    return array.dtype == bool or (array.dtype.kind == "u" and array.dtype.itemsize <= 2)


def percentiles(values: np.ndarray, q: list[float]) -> np.ndarray:
    """`np.percentile(values, q)` (linear interpolation), from a histogram for narrow integers.

    Sorting (partitioning) 65,536 pixels took 0.6 ms of a request's 1.5 ms of decoding; counting
    them into at most 65,536 bins takes a tenth of that, and reads the same order statistics.
    """
    if not is_narrow_unsigned(values) or values.size == 0:
        return np.percentile(values, q)
    # cumulative[v]: how many pixels are <= v; the k-th smallest is the first v with more than k.
    cumulative = np.cumsum(np.bincount(values.ravel()))
    position = np.asarray(q, dtype=np.float64) / 100 * (values.size - 1)
    below = np.floor(position)
    lower = np.searchsorted(cumulative, below, side="right")
    upper = np.searchsorted(cumulative, np.minimum(below + 1, values.size - 1), side="right")
    return lower + (upper - lower) * (position - below)


def normalize(image: np.ndarray, spec: Normalize) -> np.ndarray:
    """`image` (C, H, W) as float32 by `spec`; `dtype`/`fixed` expect it already dtype-scaled.

    The statistics-based methods take any real image: pixels in [0, 1], a camera's raw 8- or
    16-bit integers (whose percentiles come from a histogram), or arbitrary floats.
    """
    if image.size == 0 or spec.method == "dtype":
        return image.astype(np.float32)
    if spec.method == "fixed":
        assert spec.mean is not None and spec.std is not None  # checked by the model
        mean = np.asarray(spec.mean, dtype=np.float64)[:, None, None]
        std = np.asarray(spec.std, dtype=np.float64)[:, None, None]
        return ((image.astype(np.float64) - mean) / std).astype(np.float32)
    if spec.method == "zscore":
        low, spread = float(image.mean(dtype=np.float64)), float(image.std(dtype=np.float64))
    else:
        if spec.method == "minmax":
            low, high = float(image.min()), float(image.max())
        else:
            low, high = (float(v) for v in percentiles(image, [spec.low, spec.high]))
        spread = high - low
    if is_narrow_unsigned(image):
        # The same arithmetic on each possible pixel value once, then a lookup: one pass over
        # the image instead of four over float64 copies of it.
        levels = np.arange(int(image.max()) + 1, dtype=np.float64)
        return np.take(_rescale(levels, low, spread).astype(np.float32), image)
    return _rescale(image.astype(np.float64), low, spread).astype(np.float32)


def _rescale(values: np.ndarray, low: float, spread: float) -> np.ndarray:
    """`(values - low) / spread` in place, or zeros when there is no spread to divide by."""
    values -= low
    if spread > _TINY:
        values /= spread
    else:
        values[:] = 0.0
    return values

"""Fixed score bins whose edges are float32 numbers, so the binned ROC is exact at every edge.

A bin is chosen from the bit pattern of a float32 score: the sign, the exponent and the top
`mantissa_bits` bits of the mantissa. That is a floating-point grid, 2**mantissa_bits bins per
octave, so resolution is relative and sits where the scores are, over any range, fixed in advance
(a stream needs no data-dependent range) and with no rounding at all: every bin is a half-open
interval ``[lower edge, next lower edge)`` of float32 values, and "positive when score >= edge"
selects exactly the bins at and above it.

Two layouts, from the head's output:

``"probability"`` (sigmoid, hard sigmoid, softmax; scores in [0, 1])
    Binned on ``m = min(p, 1 - p)``, whose float32 value is exact (Sterbenz), so the grid is as
    fine near 1 as near 0: 2**M bins per octave of ``p`` below 0.5 and of ``1 - p`` above it.
    That is a near-uniform grid in logit space: a bin spans at most ``2**-M`` relatively in
    ``min(p, 1 - p)``, i.e. at most ``2**(1 - M)`` in logit and ``2**(-2 - M)`` in ``p``.
    ``p == 0`` and ``p == 1`` have exact bins of their own (a float32 sigmoid is exactly 1.0 above a
    logit of about 16.6; a hard sigmoid saturates at both ends); ``min(p, 1 - p) < 2**emin``
    (``|logit|`` above about ``-emin * ln 2``) falls into one tail bin per side.
``"unbounded"`` (ReLU, identity)
    Binned on the score itself, sign and magnitude: 2**M bins per octave of ``|x|`` in
    ``[2**emin, 2**emax)``, an exact bin for ``x == 0`` (a ReLU head puts most pixels there), one
    bin each for ``0 < |x| < 2**emin`` and for ``|x| >= 2**emax``.

Positive float32 values below ``2**(23 - M) * 2**-149`` (about 1e-42) share the bin of exact 0 and,
for probabilities, values within that distance of 1 share the bin of exact 1. Float64 scores are
rounded to float32 before binning (after forming ``1 - p`` in float64), which moves a score by at
most half a float32 ulp; the service serves float32 maps, so that is the precision thresholds
meet in practice.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from numpy.typing import NDArray

from model.errors import CalibrationError

Scale = Literal["probability", "unbounded"]
SCALES: tuple[str, ...] = ("probability", "unbounded")

_MANTISSA = 23  # float32 mantissa bits
_BIAS = 127  # float32 exponent bias


def _f32(bits: NDArray[np.integer] | int) -> NDArray[np.float64]:
    """The float32 numbers with the given bit patterns, as float64."""
    return np.asarray(bits, dtype=np.int32).view(np.float32).astype(np.float64)


class BinLayout:
    """One fixed set of score bins; see the module docstring for the two layouts."""

    def __init__(
        self,
        scale: str,
        mantissa_bits: int,
        emin: int,
        emax: int = 0,
        tiny_shift: int | None = None,
    ) -> None:
        """Bins with 2**mantissa_bits per octave over [2**emin, 2**emax) (emax: unbounded only).

        `tiny_shift` sets where the bin of exact zero ends (the first positive bin starts at the
        float32 with bit pattern ``1 << tiny_shift``); a coarse layout takes its fine layout's value
        so that every coarse edge is also a fine edge.
        """
        if scale not in SCALES:
            raise CalibrationError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
        if not 1 <= mantissa_bits <= 20:
            raise ValueError("mantissa_bits must lie in [1, 20]")
        self.scale = scale
        self.mantissa_bits = mantissa_bits
        self.shift = _MANTISSA - mantissa_bits
        self.tiny_shift = self.shift if tiny_shift is None else tiny_shift
        self.emin = emin
        # j counts float32 bit patterns in steps of 2**shift; `base` is the j of 2**emin.
        self._base = (_BIAS + emin) << mantissa_bits
        if scale == "probability":
            if not -126 < emin < -1:
                raise ValueError("emin must lie in (-126, -1) for probabilities")
            self.emax = -1
            self._half = (_BIAS - 1) << mantissa_bits  # the j of 0.5
            self.n_side = self._half - self._base
            self.n_bins = 2 * self.n_side + 4
        else:
            if not -126 < emin < emax < 128:
                raise ValueError("need -126 < emin < emax < 128")
            self.emax = emax
            self._top = (_BIAS + emax) << mantissa_bits  # the j of 2**emax
            self.n_side = self._top - self._base
            self._cmax = self.n_side + 2
            self.n_bins = 2 * self._cmax + 1

    # -- indexing ---------------------------------------------------------------------------------

    def index_unbounded(self, x: NDArray[np.float32]) -> NDArray[np.int32]:
        """Bin index of every float32 score (finite) in an unbounded layout."""
        bits = x.view(np.int32)
        sign = bits >> 31
        # Sign and magnitude to a two's complement key that is monotone in the score, with +0 and -0
        # both at 0; an arithmetic shift then floors it, so every bin is closed on its left.
        key = bits & np.int32(0x7FFFFFFF)
        key ^= sign
        key -= sign
        key >>= self.shift
        base = self._base
        # Fold everything below 2**emin in magnitude onto the three bins -1 (negative), 0, 1.
        fold = np.clip(key, -base, base - 1)
        key -= fold
        np.clip(fold, -1, 1, out=fold)
        key += fold
        np.clip(key, -self._cmax, self._cmax, out=key)
        key += self._cmax
        return key

    def index_probability(
        self, m: NDArray[np.float32], upper: NDArray[np.int32]
    ) -> NDArray[np.int32]:
        """Bin index from ``m = min(p, 1 - p)`` (float32) and ``upper = p >= 0.5`` (0 or 1)."""
        bits = m.view(np.int32)
        # Below 0.5 floor(bits / 2**s) makes bins closed on the left in p; above 0.5 the bins of
        # q = 1 - p must be closed on the right, which (bits - 1) >> s gives.
        key = bits - upper
        key >>= self.shift
        # Fold each side's tail (min(p, 1 - p) < 2**emin) onto index 1, keeping exact 0 (or exact
        # 1, where key is -1) at index 0; regular bins then start at 2.
        fold = np.clip(key, -1, self._base - 1)
        tail = key + upper
        np.clip(tail, 0, 1, out=tail)
        key -= fold
        key += tail
        # Mirror the upper side, top - key, without np.where (branchy on mixed masks, 10x slower).
        np.negative(upper, out=tail)
        key ^= tail
        key -= tail
        np.multiply(upper, np.int32(2 * self.n_side + 3), out=tail)
        key += tail
        return key

    # -- edges ------------------------------------------------------------------------------------

    def lower_edges(self, idx: NDArray[np.integer]) -> NDArray[np.float64]:
        """The smallest score of each bin: ``score >= edge`` selects that bin and all above it.

        The lowest unbounded bin has no finite edge and gets -inf.
        """
        idx = np.asarray(idx, dtype=np.int64)
        if np.any((idx < 0) | (idx >= self.n_bins)):
            raise ValueError("bin index out of range")
        out = np.empty(idx.shape, dtype=np.float64)
        base, s, tiny = self._base, self.shift, self.tiny_shift
        if self.scale == "probability":
            lo = idx <= self.n_side + 1
            g = np.where(lo, idx, 2 * self.n_side + 3 - idx)
            low_regular = _f32((np.maximum(g, 2) + base - 2) << s)
            out[:] = np.where(g == 0, 0.0, np.where(g == 1, _f32(1 << tiny), low_regular))
            # Above 0.5 a bin holds q = 1 - p in (q_lo, q_hi], so its smallest p is 1 - q_hi, exact
            # in float64 while q_hi >= 2**-40 (bits below 2**-53 would be lost).
            q_hi = _f32((np.maximum(g, 2) + base - 1) << s)
            high = np.where(g == 0, 1.0, np.where(g == 1, 1.0 - 2.0**self.emin, 1.0 - q_hi))
            out[~lo] = high[~lo]
            return out
        c = idx - self._cmax
        pos_j = np.maximum(c, 2) + base - 2
        neg_j = np.minimum(c, -2) - base + 1
        out[:] = np.where(c >= 2, _f32(pos_j << s), -_f32((-neg_j) << s))
        out[c == 1] = _f32(1 << tiny)
        out[c == 0] = 0.0
        out[c == -1] = -(2.0**self.emin)
        out[c == -self._cmax] = -np.inf
        return out

    def upper_edges(self, idx: NDArray[np.integer]) -> NDArray[np.float64]:
        """The lower edge of the next bin (the top bin: +inf, or 1.0 for the bin of p == 1)."""
        idx = np.asarray(idx, dtype=np.int64)
        top = idx >= self.n_bins - 1
        out = self.lower_edges(np.minimum(idx + 1, self.n_bins - 1))
        out[top] = 1.0 if self.scale == "probability" else np.inf
        return out

    def logit_of_edges(self, idx: NDArray[np.integer]) -> NDArray[np.float64]:
        """Logit of each probability bin's lower edge, computed without cancellation near 1."""
        if self.scale != "probability":
            raise ValueError("logits exist for probability layouts only")
        idx = np.asarray(idx, dtype=np.int64)
        p = self.lower_edges(idx)
        with np.errstate(divide="ignore"):
            low = np.log(p) - np.log1p(-p)
            q = 1.0 - p  # exact above 0.5 (Sterbenz), so this keeps every bit of q
            high = np.log1p(-q) - np.log(q)
        return np.where(p < 0.5, low, high)

    def coarse_index_of(self, coarse: BinLayout) -> NDArray[np.int16]:
        """For each bin of this layout, the bin of `coarse` that contains it."""
        if coarse.scale != self.scale or coarse.tiny_shift != self.tiny_shift:
            raise ValueError("a coarse layout must share the scale and tiny_shift")
        if coarse.n_bins > np.iinfo(np.int16).max // 2:
            raise ValueError("coarse layout too large for int16 codes")
        fine = self.lower_edges(np.arange(self.n_bins))
        edges = coarse.lower_edges(np.arange(coarse.n_bins))
        lut = np.searchsorted(edges, fine, side="right") - 1
        return lut.astype(np.int16)

    def describe(self) -> dict[str, object]:
        """The layout in words and numbers, for the report's `quantisation` entry."""
        m = self.mantissa_bits
        if self.scale == "probability":
            scheme = (
                f"float32 bins on min(p, 1 - p): 2**{m} per octave down to 2**{self.emin}, exact "
                "bins for p == 0 and p == 1; a threshold is a bin's lower edge, exact for "
                "'score >= threshold'"
            )
            return {
                "scheme": scheme,
                "n_bins": self.n_bins,
                "mantissa_bits": m,
                "max_step_probability": 2.0 ** (-2 - m),
                "max_step_logit": 2.0 ** (1 - m),
                "resolved_logit_range": [self.emin * np.log(2.0), -self.emin * np.log(2.0)],
            }
        scheme = (
            f"float32 bins on the score: 2**{m} per octave of |score| in "
            f"[2**{self.emin}, 2**{self.emax}), an exact bin for score == 0; a threshold is a "
            "bin's lower edge, exact for 'score >= threshold'"
        )
        return {
            "scheme": scheme,
            "n_bins": self.n_bins,
            "mantissa_bits": m,
            "max_relative_step": 2.0**-m,
            "resolved_range": [2.0**self.emin, 2.0**self.emax],
        }

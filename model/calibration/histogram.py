"""One streaming pass over (score map, mask) pairs: per-bin positive and negative pixel counts.

`ScoreHistogram.update` takes one image at a time and folds it into fixed bins (see
`model.calibration.binning`): memory is set when the histogram is made and does not grow with the
number of pixels or images. Alongside the fine counts it keeps, exactly, the number of pixels,
positives, the lowest and highest score and how many pixels tie at each, and for probability heads
the sum of squared errors (Brier, to about 1e-7 relative); per image it hands a coarse histogram to
the image resampler (`model.calibration.bootstrap`).

An image is validated whole before any of it is counted, so a rejected image leaves the histogram as
it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
from numpy.typing import ArrayLike, NDArray

from model.calibration.binning import SCALES, BinLayout
from model.calibration.bootstrap import ImageResampler
from model.calibration.conformal import PerImageCounts
from model.calibration.recalibration import PixelSample
from model.errors import CalibrationError

# Pixels per step of the pass: small enough that a dozen int32 temporaries stay in cache.
CHUNK = 1 << 16
# Codes buffered between bincounts into the fine counts (an 8 MB buffer).
BULK = 1 << 20


@dataclass(frozen=True)
class _Layouts:
    fine: BinLayout
    coarse: BinLayout
    # The coarse bin of each fine bin.
    coarse_of: NDArray[np.int16]
    # The coarse code (2 * coarse bin + label) of each fine code.
    coarse_code: NDArray[np.int16]
    # The first fine bin of each coarse bin.
    coarse_starts: NDArray[np.intp]


@cache
def layouts(scale: str) -> _Layouts:
    """The fine and coarse bin layouts of a scale (built once per process; about 5 ms)."""
    if scale not in SCALES:
        raise CalibrationError(
            f"unknown scale {scale!r}: use 'probability' for sigmoid, hard_sigmoid or softmax "
            "heads (scores in [0, 1]) and 'unbounded' for relu or identity heads"
        )
    if scale == "probability":
        fine = BinLayout("probability", 12, -40)
        coarse = BinLayout("probability", 6, -20, tiny_shift=fine.tiny_shift)
    else:
        fine = BinLayout("unbounded", 13, -16, 16)
        coarse = BinLayout("unbounded", 6, -12, 12, tiny_shift=fine.tiny_shift)
    lut = fine.coarse_index_of(coarse)
    code = np.repeat(2 * lut, 2)
    code[1::2] += 1
    starts = np.flatnonzero(np.diff(lut, prepend=-1))
    # Shared by every histogram of the process (threads included): make sharing safe.
    for a in (lut, code, starts):
        a.setflags(write=False)
    return _Layouts(fine, coarse, lut, code, starts)


class ScoreHistogram:
    """Streaming per-bin pixel counts of a calibration set, for one head's score scale."""

    def __init__(
        self,
        scale: str = "probability",
        *,
        n_bootstrap: int = 200,
        max_images_kept: int = 256,
        seed: int = 0,
        per_image: bool = False,
        sample_pixels: bool = False,
    ) -> None:
        """An empty histogram; `scale` is "probability" (scores in [0, 1]) or "unbounded".

        `n_bootstrap` Poisson-bootstrap replicates over images give the threshold's interval;
        up to `max_images_kept` per-image histograms (a uniform sample) give the spread of
        per-image optimal thresholds; `seed` makes both reproducible. With `per_image`, every
        image's coarse histogram is kept too (`self.per_image`, 4 bytes per coarse code per image)
        for the guaranteed strategies. With `sample_pixels`, a uniform sample of each image's
        pixels is kept (`self.sample`, `model.calibration.recalibration`) to fit a recalibration.
        """
        lay = layouts(scale)
        self.scale = scale
        self.fine = lay.fine
        self.coarse = lay.coarse
        self._coarse_code = lay.coarse_code
        self._starts = lay.coarse_starts
        self._counts = np.zeros(2 * self.fine.n_bins, dtype=np.int64)
        # Fine codes wait here for one bincount: scattering them one by one (np.add.at) costs
        # twice as much. Allocated on first use.
        self._buffer: NDArray[np.intp] | None = None
        self._n_buffered = 0
        self.resampler = ImageResampler(
            2 * self.coarse.n_bins, n_bootstrap=n_bootstrap, capacity=max_images_kept, seed=seed
        )
        self.per_image = PerImageCounts(2 * self.coarse.n_bins) if per_image else None
        self.sample = PixelSample(seed=seed) if sample_pixels else None
        self.n_images = 0
        self.n_pixels = 0
        self.score_min = np.inf
        self.score_max = -np.inf
        self.n_at_min = 0
        self.n_at_max = 0
        self.squared_error = 0.0
        self.saw_logits = False

    @property
    def is_probability(self) -> bool:
        """Whether the scores are probabilities in [0, 1]."""
        return self.scale == "probability"

    @property
    def counts(self) -> NDArray[np.int64]:
        """Pixel counts per code ``2 * bin + label`` (label 1: foreground), bins in score order."""
        self._flush()
        return self._counts

    @property
    def n_positive(self) -> int:
        """Foreground pixels counted so far."""
        return int(self.counts[1::2].sum())

    def update(self, scores: ArrayLike, mask: ArrayLike, *, logits: bool = False) -> None:
        """Count one image: its score map and its mask (non-zero = foreground), same shape.

        With ``logits=True`` (probability scale only) `scores` are the head's pre-sigmoid logits;
        they are binned as ``sigmoid(logits)`` computed in float64, which keeps the order of
        pixels that a float32 sigmoid would round to exactly 1.0.
        """
        where = f"image {self.n_images + 1}"
        s = np.asarray(scores)
        y = np.asarray(mask)
        if s.shape != y.shape:
            raise CalibrationError(
                f"{where}: the score map has shape {s.shape} but the mask has shape {y.shape}; "
                "they must match pixel for pixel (resize the mask, or drop the channel axis)"
            )
        if s.size == 0:
            raise CalibrationError(f"{where}: the score map is empty")
        if not (np.issubdtype(s.dtype, np.floating) or np.issubdtype(s.dtype, np.integer)):
            raise CalibrationError(f"{where}: scores must be real numbers, got dtype {s.dtype}")
        if not (np.issubdtype(y.dtype, np.number) or y.dtype == np.bool_):
            raise CalibrationError(f"{where}: the mask must be numeric or boolean, got {y.dtype}")
        if logits and not self.is_probability:
            raise CalibrationError(
                "logits=True applies to probability heads; an unbounded head's scores are "
                "calibrated as they are"
            )
        if s.dtype not in (np.float32, np.float64):
            s = s.astype(np.float32 if s.dtype.itemsize <= 2 else np.float64)
        s = s.reshape(-1)
        y = y.reshape(-1)
        lo, hi = self._check_scores(s, logits, where)

        p_lo, p_hi = (_sigmoid(lo), _sigmoid(hi)) if logits else (float(lo), float(hi))
        # Ties matter only at the running extremes; counting them costs a pass, so skip otherwise.
        count_lo = p_lo <= self.score_min
        count_hi = p_hi >= self.score_max
        n_lo = n_hi = 0
        coarse = np.zeros(self.resampler.n_codes, dtype=np.int64)
        # A large image is binned in whole buffers, and its coarse histogram is read off each
        # buffer's fine histogram (a pass over all bins); a small one pays per pixel instead.
        large = s.size >= BULK // 2
        if large:
            self._flush()
        for start in range(0, s.size, CHUNK):
            sc = s[start : start + CHUNK]
            yc = y[start : start + CHUNK]
            yc = yc if yc.dtype == np.bool_ else yc != 0
            codes = self._bins(sc, yc, logits)
            codes <<= 1
            codes += yc
            if not large:
                coarse += np.bincount(np.take(self._coarse_code, codes), minlength=coarse.size)
            fine = self._buffer_codes(codes)
            if fine is not None and large:
                coarse += self._coarse_counts(fine)
            if count_lo:
                n_lo += int(np.count_nonzero(sc == lo))
            if count_hi:
                n_hi += int(np.count_nonzero(sc == hi))
        if large:
            fine = self._flush()
            if fine is not None:
                coarse += self._coarse_counts(fine)

        if p_lo < self.score_min:
            self.score_min, self.n_at_min = p_lo, n_lo
        elif p_lo == self.score_min:
            self.n_at_min += n_lo
        if p_hi > self.score_max:
            self.score_max, self.n_at_max = p_hi, n_hi
        elif p_hi == self.score_max:
            self.n_at_max += n_hi
        self.resampler.add(coarse)
        if self.per_image is not None:
            self.per_image.add(coarse)
        if self.sample is not None:
            self.sample.add(s, y, as_logit=self.is_probability and not logits)
        self.n_images += 1
        self.n_pixels += s.size
        self.saw_logits |= logits

    def _check_scores(
        self, s: NDArray[np.floating], logits: bool, where: str
    ) -> tuple[np.floating, np.floating]:
        lo, hi = s.min(), s.max()
        if not (np.isfinite(lo) and np.isfinite(hi)):
            n_nan = int(np.count_nonzero(np.isnan(s)))
            n_inf = int(np.count_nonzero(np.isinf(s)))
            raise CalibrationError(
                f"{where}: {n_nan} NaN and {n_inf} infinite scores; every score must be finite "
                "(check the model's weights and the input image)"
            )
        if self.is_probability and not logits and (lo < 0 or hi > 1):
            raise CalibrationError(
                f"{where}: scores span [{float(lo):.6g}, {float(hi):.6g}], outside [0, 1]; for a "
                "relu or identity head use scale='unbounded', for pre-sigmoid logits pass "
                "logits=True"
            )
        return lo, hi

    def _bins(
        self, sc: NDArray[np.floating], yc: NDArray[np.bool_], logits: bool
    ) -> NDArray[np.int32]:
        """Fine bins of one chunk; adds the chunk's squared error (Brier) on the way."""
        if not self.is_probability:
            x = sc if sc.dtype == np.float32 else sc.astype(np.float32)
            return self.fine.index_unbounded(x)
        if logits:
            z = sc.astype(np.float64)
            e = np.exp(-np.abs(z))
            m = e / (1.0 + e)
            upper = z >= 0
            p = np.where(upper, 1.0 - m, m)
            m32 = m.astype(np.float32)
        else:
            # Float32 stays float32: p - y is exact, the square rounds by 2**-24 and numpy's
            # pairwise sum adds about 1e-7 relative per chunk; chunks add up in float64.
            p = sc - yc
            upper = sc >= 0.5
            # 1 - p is exact in p's own precision above 0.5 (Sterbenz): no bit of q is lost.
            m32 = np.minimum(sc, sc.dtype.type(1) - sc).astype(np.float32, copy=False)
        if logits:
            p -= yc
        # Not np.dot: a threaded BLAS call on so small a vector stalls for milliseconds when the
        # cores are busy (as they are beside a model).
        np.square(p, out=p)
        self.squared_error += float(p.sum())
        return self.fine.index_probability(m32, upper.astype(np.int32))

    def _buffer_codes(self, codes: NDArray[np.int32]) -> NDArray[np.int64] | None:
        """Queue codes for the fine counts; the fine histogram of a buffer that filled, if any."""
        if self._buffer is None:
            self._buffer = np.empty(BULK, dtype=np.intp)
        fine = None
        if self._n_buffered + codes.size > BULK:
            fine = self._flush()
        n = self._n_buffered
        self._buffer[n : n + codes.size] = codes
        self._n_buffered = n + codes.size
        return fine

    def _flush(self) -> NDArray[np.int64] | None:
        """Add the buffered codes to the counts; their own fine histogram, or None if none."""
        if not self._n_buffered or self._buffer is None:
            return None
        fine = np.bincount(self._buffer[: self._n_buffered], minlength=self._counts.size)
        self._counts += fine
        self._n_buffered = 0
        return fine

    def _coarse_counts(self, fine: NDArray[np.int64]) -> NDArray[np.int64]:
        """Coarse codes from fine ones: coarse bins are runs of fine bins (rows), per label."""
        return np.add.reduceat(fine.reshape(-1, 2), self._starts, axis=0).reshape(-1)

    def nonempty(self) -> tuple[NDArray[np.intp], NDArray[np.int64], NDArray[np.int64]]:
        """Indices of the bins holding pixels, ascending, with their positive and negative counts.

        Bins are numbered in score order; see `BinLayout.lower_edges` for their thresholds.
        """
        pos = self.counts[1::2]
        neg = self.counts[0::2]
        idx = np.flatnonzero((pos > 0) | (neg > 0))
        return idx, pos[idx], neg[idx]

    @property
    def nbytes(self) -> int:
        """Memory held by the histogram, in bytes; fixed when it is made."""
        buffer = 0 if self._buffer is None else self._buffer.nbytes
        kept = 0 if self.per_image is None else self.per_image.nbytes
        kept += 0 if self.sample is None else self.sample.nbytes
        return self._counts.nbytes + buffer + self.resampler.nbytes + kept


def _sigmoid(z: float | np.floating) -> float:
    z = float(z)
    if z >= 0:
        return 1.0 / (1.0 + np.exp(-z))
    e = np.exp(z)
    return float(e / (1.0 + e))

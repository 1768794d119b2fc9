"""Resampling images, not pixels, in memory that does not grow with the number of images.

Pixels of one image are strongly correlated, so a bootstrap that resamples pixels would give
intervals far too narrow; the unit of resampling is the image. Two bounded structures serve that,
both over a coarse bin layout (each image reduced to per-bin positive and negative counts):

* a Poisson bootstrap (Hanley & MacGibbon 2006; Oza & Russell 2001): replicate ``b`` gives each
  image an independent Poisson(1) weight, the streaming equivalent of drawing the images with
  replacement (the two agree as the number of images grows), so ``n_bootstrap`` replicate
  histograms are all that is stored;
* a uniform reservoir sample (Vitter's algorithm R) of at most ``capacity`` per-image histograms,
  from which the spread of per-image optimal thresholds is estimated; with no more images than
  that, every image is kept and the spread is exact over the coarse bins.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from numpy.typing import NDArray
from threadpoolctl import ThreadpoolController  # a dependency of scikit-learn

# Columns per matrix product when folding a batch into the replicates, which bounds the temporary.
_BLOCK = 1024


@lru_cache(maxsize=1)
def _blas() -> ThreadpoolController:
    # Scanning the loaded libraries takes a millisecond or two; do it once.
    return ThreadpoolController()


class ImageResampler:
    """Poisson-bootstrap replicates and a reservoir of per-image coarse histograms."""

    def __init__(
        self, n_codes: int, *, n_bootstrap: int = 200, capacity: int = 256, seed: int = 0
    ) -> None:
        """Keep `n_bootstrap` replicates and up to `capacity` images of `n_codes` counts each."""
        if n_bootstrap < 0 or capacity < 0:
            raise ValueError("n_bootstrap and capacity must be >= 0")
        self.n_codes = n_codes
        self.n_bootstrap = n_bootstrap
        self.capacity = capacity
        self.n_images = 0
        self._rng = np.random.default_rng(seed)
        self._replicates = np.zeros((n_bootstrap, n_codes), dtype=np.float64)
        # Images wait in a small batch so that adding them to the replicates is one BLAS product.
        self._batch = 32
        self._weights = np.zeros((n_bootstrap, self._batch), dtype=np.float64)
        self._pending = np.zeros((self._batch, n_codes), dtype=np.float64)
        self._n_pending = 0
        self._kept = np.zeros((capacity, n_codes), dtype=np.int32)
        self._n_kept = 0

    def add(self, counts: NDArray[np.integer]) -> None:
        """Add one image's coarse histogram."""
        i = self.n_images
        self.n_images += 1
        if self.n_bootstrap:
            self._weights[:, self._n_pending] = self._rng.poisson(1.0, self.n_bootstrap)
            self._pending[self._n_pending] = counts
            self._n_pending += 1
            if self._n_pending == self._batch:
                self._flush()
        if self.capacity:
            slot = i if i < self.capacity else int(self._rng.integers(0, i + 1))
            if slot < self.capacity:
                # An image above 2**31 pixels in one bin would overflow int32; no image is that big.
                self._kept[slot] = counts
                self._n_kept = min(self._n_kept + 1, self.capacity)

    def _flush(self) -> None:
        k = self._n_pending
        if not k:
            return
        pending = self._pending[:k]
        cols = np.flatnonzero(pending.any(axis=0))
        weights = self._weights[:, :k]
        # These products are small: a threaded BLAS spends more time waking and syncing its
        # threads than computing (5x slower on two busy cores), so run them on this thread.
        # The limit is process-wide for its few milliseconds; other numpy calls stay correct.
        with _blas().limit(limits=1, user_api="blas"):
            for start in range(0, cols.size, _BLOCK):
                block = cols[start : start + _BLOCK]
                self._replicates[:, block] += weights @ pending[:, block]
        self._n_pending = 0

    def replicates(self) -> NDArray[np.float64]:
        """The bootstrap replicate histograms, shape (n_bootstrap, n_codes)."""
        self._flush()
        return self._replicates

    def kept(self) -> NDArray[np.int32]:
        """The reservoir of per-image histograms, shape (n_kept, n_codes)."""
        return self._kept[: self._n_kept]

    @property
    def sampled(self) -> bool:
        """Whether the reservoir holds a sample rather than every image."""
        return self.n_images > self.capacity

    @property
    def nbytes(self) -> int:
        """Memory held, in bytes (constant for given sizes)."""
        return (
            self._replicates.nbytes
            + self._weights.nbytes
            + self._pending.nbytes
            + self._kept.nbytes
        )

"""Drift maths: the calibration's score profile, served summaries and the PSI between them."""

from __future__ import annotations

import numpy as np
import pytest

from model.calibration import ScoreHistogram
from model.calibration.drift import (
    N_QUANTILES,
    PSI_ALERT,
    PSI_WARN,
    SAMPLE_PIXELS,
    psi,
    sample,
    score_profile,
    status_of,
    summarise,
)


def filled(scale: str, maps: list[np.ndarray]) -> ScoreHistogram:
    """A histogram of `maps`, each with a mask of its top third."""
    hist = ScoreHistogram(scale, n_bootstrap=0)
    for scores in maps:
        hist.update(scores, scores > np.quantile(scores, 0.66))
    return hist


def test_profile_cuts_the_calibration_scores_into_equal_shares() -> None:
    rng = np.random.default_rng(0)
    maps = [rng.beta(2, 5, (64, 64)).astype(np.float32) for _ in range(8)]
    hist = filled("probability", maps)
    profile = score_profile(hist, threshold=0.5)
    scores = np.concatenate([m.ravel() for m in maps])
    assert len(profile.fractions) == len(profile.edges) + 1 == N_QUANTILES
    assert sum(profile.fractions) == pytest.approx(1.0)
    assert list(profile.edges) == sorted(profile.edges)
    # Exact: every cut is a bin edge, so the shares are counts of the raw scores.
    counts, above = summarise(profile, scores)
    assert np.allclose(counts / scores.size, profile.fractions)
    assert profile.foreground_fraction == pytest.approx(np.mean(scores >= 0.5), abs=1e-3)
    assert above == np.count_nonzero(scores >= 0.5)
    assert psi(np.asarray(profile.fractions), counts) == pytest.approx(0.0, abs=1e-9)


def test_ties_merge_bins_for_a_relu_head() -> None:
    rng = np.random.default_rng(1)
    maps = [np.maximum(rng.normal(-1, 1, (32, 32)), 0).astype(np.float32) for _ in range(4)]
    profile = score_profile(filled("unbounded", maps), threshold=0.3)
    share_at_zero = np.mean(np.concatenate([m.ravel() for m in maps]) == 0)
    assert profile.fractions[0] == pytest.approx(share_at_zero)
    assert len(profile.fractions) < N_QUANTILES  # the tied 84% is one bin, not 16


def test_psi_grows_with_the_shift_and_sets_the_status() -> None:
    rng = np.random.default_rng(2)
    reference = [rng.beta(2, 5, (64, 64)).astype(np.float32) for _ in range(8)]
    profile = score_profile(filled("probability", reference), threshold=0.5)
    expected = np.asarray(profile.fractions)
    same, _ = summarise(profile, rng.beta(2, 5, 20_000))
    shifted, _ = summarise(profile, rng.beta(2.6, 5, 20_000))
    inverted, _ = summarise(profile, 1.0 - rng.beta(2, 5, 20_000))
    distances = [psi(expected, counts) for counts in (same, shifted, inverted)]
    assert distances == sorted(distances)
    assert [status_of(d) for d in distances] == ["ok", "warn", "alert"]
    assert status_of(PSI_WARN) == "warn" and status_of(PSI_ALERT) == "alert"
    assert np.isfinite(psi(expected, np.zeros_like(same)))  # an empty window is not a crash


def test_sample_is_bounded_and_spread() -> None:
    large = np.arange(512 * 512, dtype=np.float32).reshape(512, 512)
    picked = sample(large)
    assert SAMPLE_PIXELS // 2 < picked.size <= SAMPLE_PIXELS
    assert len(np.unique(picked.astype(np.int64) % 512)) > 64  # not the same few columns
    small = np.ones((8, 8), dtype=np.float32)
    assert sample(small).size == 64

"""The fixed bin layouts: monotone, exact at every edge, coarse bins nested in fine ones."""

from __future__ import annotations

import numpy as np
import pytest

from model.calibration import BinLayout, CalibrationError
from model.calibration.histogram import layouts

F32 = np.float32


def f32(*values: float) -> np.ndarray:
    """A float32 array of the values."""
    return np.array(values, dtype=np.float32)


def _index_probability(layout: BinLayout, p: np.ndarray) -> np.ndarray:
    """Bin p the way the histogram does: 1 - p in p's precision, then rounded to float32."""
    upper = (p >= 0.5).astype(np.int32)
    m = np.minimum(p, p.dtype.type(1) - p).astype(np.float32)
    return layout.index_probability(m, upper)


def _probabilities(rng: np.random.Generator) -> np.ndarray:
    specials = [0.0, 1.0, 0.5, 0.25, 0.75, 1e-45, 2.0**-40, 2.0**-41, 1 - 2.0**-24, 1e-30]
    spread = F32(10.0) ** rng.uniform(-44, 0, 20000).astype(F32)
    p = np.concatenate(
        [rng.random(20000).astype(F32), spread, F32(1) - spread, np.array(specials, dtype=F32)]
    )
    p = np.clip(p, 0, 1)
    p = np.concatenate([p, np.nextafter(f32(0.5, 0.25, 1.0), F32(0))])
    return np.sort(p)


@pytest.mark.parametrize("scale", ["probability", "unbounded"])
def test_edges_increase_and_every_score_lies_in_its_bin(scale: str) -> None:
    fine = layouts(scale).fine
    rng = np.random.default_rng(0)
    if scale == "probability":
        x = _probabilities(rng)
        idx = _index_probability(fine, x)
    else:
        mag = F32(10.0) ** rng.uniform(-9, 7, 40000).astype(F32)
        x = np.concatenate(
            [
                mag * rng.choice(f32(-1, 1), mag.size),
                f32(0.0, -0.0, 2**-16, -(2**-16), 2**16, -(2**16), 1e30, -1e30, 1e-45, 0.5),
            ]
        )
        x = np.sort(x)
        idx = fine.index_unbounded(x.copy())
    assert np.all(np.diff(idx) >= 0)
    assert idx.min() >= 0 and idx.max() < fine.n_bins
    lo, hi = fine.lower_edges(idx), fine.upper_edges(idx)
    assert np.all(lo <= x)
    assert np.all((x < hi) | ((x == 1.0) & (scale == "probability")))
    assert np.all(np.diff(fine.lower_edges(np.arange(fine.n_bins))) > 0)


@pytest.mark.parametrize("scale", ["probability", "unbounded"])
def test_each_edge_opens_its_own_bin(scale: str) -> None:
    """`score >= edge` is exact: an edge itself falls in the bin it opens, not the one below."""
    fine = layouts(scale).fine
    bins = np.arange(1, fine.n_bins)
    edges = fine.lower_edges(bins)
    if scale == "probability":
        # Edges above 0.5 are 1 - q in float64; form 1 - p in float64 as the histogram does.
        got = _index_probability(fine, edges)
    else:
        got = fine.index_unbounded(edges.astype(np.float32))
    np.testing.assert_array_equal(got, bins)


def test_probability_resolution_near_one_and_zero() -> None:
    fine = layouts("probability").fine
    # Distinct float32 values just below 1 land in distinct bins; 1.0 has a bin of its own.
    p = f32(1 - 2.0**-24, 1 - 2.0**-23, 1 - 2.0**-22, 1.0)
    assert len(set(_index_probability(fine, p).tolist())) == 4
    # float64 probabilities beyond float32's reach near 1 still keep their order.
    p64 = 1.0 - np.array([1e-9, 1e-10, 1e-11])
    assert np.all(np.diff(_index_probability(fine, p64)) > 0)
    # Exact 0, the tail below 2**-40 (logit < -27.7), then resolved values.
    p0 = f32(0.0, 1e-20, 1e-12, 1.001e-12, 1e-10)
    assert np.all(np.diff(_index_probability(fine, p0)) > 0)
    widths = fine.upper_edges(np.arange(fine.n_bins - 1)) - fine.lower_edges(
        np.arange(fine.n_bins - 1)
    )
    assert widths.max() <= 2.0**-14


def test_unbounded_zero_is_exact() -> None:
    fine = layouts("unbounded").fine
    idx = fine.index_unbounded(f32(-1e-6, -0.0, 0.0, 1e-6, 1e-3))
    assert idx[1] == idx[2]
    assert idx[0] < idx[1] < idx[3] < idx[4]
    assert fine.lower_edges(idx[1:2])[0] == 0.0


@pytest.mark.parametrize("scale", ["probability", "unbounded"])
def test_coarse_bins_nest_fine_bins(scale: str) -> None:
    lay = layouts(scale)
    fine_bins = np.arange(lay.fine.n_bins)
    coarse_of = lay.coarse_of
    assert np.all(np.diff(coarse_of) >= 0)
    starts = np.searchsorted(coarse_of, np.arange(lay.coarse.n_bins))
    np.testing.assert_array_equal(lay.coarse_starts, starts)
    assert np.all(lay.coarse.lower_edges(coarse_of) <= lay.fine.lower_edges(fine_bins))
    assert np.all(lay.fine.upper_edges(fine_bins) <= lay.coarse.upper_edges(coarse_of))
    assert np.array_equal(np.unique(coarse_of), np.arange(lay.coarse.n_bins))


def test_half_is_an_edge_in_both_layouts() -> None:
    for scale in ("probability", "unbounded"):
        fine = layouts(scale).fine
        assert 0.5 in fine.lower_edges(np.arange(fine.n_bins))


def test_logit_of_edges_keeps_precision_near_one() -> None:
    fine = layouts("probability").fine
    edges = fine.lower_edges(np.arange(fine.n_bins))
    top = np.flatnonzero((edges > 1 - 1e-9) & (edges < 1))[:3]
    z = fine.logit_of_edges(top)
    q = 1.0 - edges[top]
    np.testing.assert_allclose(z, np.log1p(-q) - np.log(q), rtol=1e-12)
    assert np.all(z > 20)


def test_unknown_scale() -> None:
    with pytest.raises(CalibrationError, match="unknown scale"):
        layouts("logit")

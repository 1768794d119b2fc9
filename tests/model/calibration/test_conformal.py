"""Guaranteed strategies: conformal risk control of FNR and Learn-then-Test of FDR."""

from __future__ import annotations

import math

import numpy as np
import pytest

from model.calibration import Criterion, ScoreHistogram, build_report, calibrate_arrays
from model.calibration.conformal import (
    crc_index,
    fnr_losses,
    hb_pvalue,
    image_curves,
    ltt_certified,
)
from model.errors import CalibrationError, GuaranteeError

# Coarse bins are 64 per octave of min(p, 1 - p): at most 2**-5 wide in logit.
COARSE_LOGIT_WIDTH = 2.0**-5


def _images(n: int, seed: int, size: int = 24) -> list[tuple[np.ndarray, np.ndarray]]:
    """Logit maps and masks: objects of varying size and contrast, some images empty."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        mask = rng.random((size, size)) < rng.uniform(0.05, 0.4)
        if i % 7 == 0:
            mask[:] = False
        logits = rng.normal(0, 1, mask.shape) + rng.uniform(1.5, 3.5) * mask - 1.0
        out.append((logits, mask))
    return out


def _crc_on_raw_pixels(pairs: list[tuple[np.ndarray, np.ndarray]], alpha: float) -> float:
    """The paper's rule, written out on raw scores: the largest lambda with the bound met."""
    probs = [(1 / (1 + np.exp(-z)), m.astype(bool)) for z, m in pairs if m.any()]
    n = len(probs)
    candidates = np.unique(np.concatenate([p.ravel() for p, _ in probs]))

    def passes(lam: float) -> bool:
        risk = np.mean([1.0 - np.count_nonzero(p[m] >= lam) / m.sum() for p, m in probs])
        return bool(n / (n + 1) * risk + 1 / (n + 1) <= alpha)

    # The risk only falls as lambda falls: bisect for the largest candidate that passes.
    lo, hi = 0, len(candidates) - 1
    assert passes(candidates[lo])
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if passes(candidates[mid]) else (lo, mid - 1)
    return float(candidates[lo])


def _logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


@pytest.mark.parametrize(("seed", "alpha"), [(0, 0.1), (1, 0.05), (2, 0.2)])
def test_fnr_control_matches_the_papers_rule_within_one_bin(seed: int, alpha: float) -> None:
    pairs = _images(80, seed)
    report = calibrate_arrays(pairs, "probability", Criterion("fnr_control", alpha), logits=True)
    exact = _crc_on_raw_pixels(pairs, alpha)
    # The grid is coarser than the raw scores: the chosen edge is the one at or below the exact
    # lambda, in the same coarse bin.
    gap = _logit(exact) - _logit(report.threshold)
    assert -1e-9 <= gap <= COARSE_LOGIT_WIDTH + 1e-9
    g = report.guarantee
    assert g is not None and g.risk == "fnr" and g.alpha == alpha and g.bound == 1.0
    assert g.n_images == sum(m.any() for _, m in pairs)
    assert g.per_image.n_excluded == sum(not m.any() for _, m in pairs)
    assert g.calibration_risk <= alpha
    assert set(report.to_dict()["guarantee"]) == {
        "risk",
        "alpha",
        "delta",
        "n_images",
        "bound",
        "empty_policy",
        "calibration_risk",
        "per_image",
        "statement",
    }
    assert report.chosen.threshold == report.threshold


def test_fnr_control_holds_on_average_over_random_splits() -> None:
    pairs = _images(300, 7, size=16)
    hist = ScoreHistogram("probability", n_bootstrap=0, per_image=True)
    for z, m in pairs:
        hist.update(z, m, logits=True)
    assert hist.per_image is not None
    pos, neg = hist.per_image.matrix()
    curves = image_curves(pos, neg, hist.coarse.lower_edges(np.arange(pos.shape[1])), 2.0)
    losses, _ = fnr_losses(curves)
    rng = np.random.default_rng(0)
    realised = []
    for _ in range(300):
        order = rng.permutation(len(losses))
        cal, test = order[:100], order[100:]
        k = crc_index(losses[cal], 0.1)
        assert k is not None
        realised.append(losses[test, k].mean())
    assert np.mean(realised) <= 0.1 + 0.005
    assert np.mean(realised) >= 0.1 - 0.03  # the bound is tight, not vacuous


def test_fdr_control_certifies_and_chooses_the_best_dice() -> None:
    pairs = _images(120, 3)
    report = calibrate_arrays(
        pairs, "probability", Criterion("fdr_control", 0.2, delta=0.1), logits=True
    )
    g = report.guarantee
    assert g is not None and g.risk == "fdr" and g.delta == 0.1 and g.n_images == 120
    assert g.calibration_risk <= 0.2
    holm = calibrate_arrays(
        pairs,
        "probability",
        Criterion("fdr_control", 0.2, delta=0.1, procedure="holm"),
        logits=True,
    )
    assert holm.guarantee is not None and holm.guarantee.calibration_risk <= 0.2


def test_a_set_too_small_to_certify_fails_with_the_reason() -> None:
    with pytest.raises(GuaranteeError, match="needs at least 19"):
        calibrate_arrays(_images(10, 0), "probability", Criterion("fnr_control", 0.05), logits=True)
    with pytest.raises(GuaranteeError, match="cannot certify a false discovery rate"):
        calibrate_arrays(
            _images(3, 0), "probability", Criterion("fdr_control", 0.01, delta=0.01), logits=True
        )


def test_without_per_image_counts_the_reason_is_given() -> None:
    hist = ScoreHistogram("probability")
    for z, m in _images(20, 0):
        hist.update(z, m, logits=True)
    with pytest.raises(GuaranteeError, match="per_image=True"):
        build_report(hist, Criterion("fnr_control", 0.1))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strategy": "fnr_control"}, "needs a target"),
        ({"strategy": "fnr_control", "target": 0.0}, "strictly between 0 and 1"),
        ({"strategy": "fnr_control", "target": 1.0}, "strictly between 0 and 1"),
        ({"strategy": "fdr_control"}, "needs a target"),
        ({"strategy": "fdr_control", "target": 0.1, "delta": 0.0}, "delta must lie"),
        ({"strategy": "fdr_control", "target": 0.1, "delta": 1.5}, "delta must lie"),
        ({"strategy": "fnr_control", "target": 0.1, "delta": 0.1}, "takes no delta"),
        ({"strategy": "f1", "delta": 0.1}, "takes no delta"),
        ({"strategy": "fdr_control", "target": 0.1, "procedure": "bonf"}, "unknown procedure"),
    ],
)
def test_bad_parameters_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(CalibrationError, match=message):
        Criterion(**kwargs)  # type: ignore[arg-type]


def test_fdr_control_has_a_default_delta() -> None:
    assert Criterion("fdr_control", 0.1).delta == 0.1


def test_hb_pvalue_is_small_far_below_alpha_and_one_above() -> None:
    p = hb_pvalue(np.array([0.0, 0.05, 0.3]), 200, 0.2)
    assert p[0] < 1e-9 and p[1] < 1e-6 and p[2] == 1.0
    losses = np.tile(np.array([0.0, 0.05, 0.5, 0.05]), (200, 1))
    # Fixed sequence stops at the first failure; Holm certifies every small-risk candidate.
    assert ltt_certified(losses, 0.2, 0.1).tolist() == [True, True, False, False]
    assert ltt_certified(losses, 0.2, 0.1, "holm").tolist() == [True, True, False, True]

"""The calibration engine against scikit-learn on the raw pixels, for every kind of head."""

from __future__ import annotations

import json
import math
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

import model.calibration.histogram as histogram_module
from model.calibration import (
    STRATEGIES,
    CalibrationError,
    CalibrationReport,
    Criterion,
    ScoreHistogram,
    build_report,
    calibrate_arrays,
)
from model.calibration.strategies import cumulative_counts, select
from tests.helpers import COSTS, POINT_KEYS, REPORT_KEYS, TARGETS, raw_objective

HEADS = ("sigmoid", "hard_sigmoid", "relu", "identity")
SCALE = {
    "sigmoid": "probability",
    "hard_sigmoid": "probability",
    "relu": "unbounded",
    "identity": "unbounded",
}
EXTRA_KEYS = {
    "tied_at_min_fraction",
    "per_image_thresholds",
    "score_range",
    "quantisation",
    "score_profile",
}


def logit_maps(
    n_images: int = 24, side: int = 64, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pre-activation maps with the ambiguity of microscopy: faint objects, bright debris, noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.ogrid[:side, :side]
    out = []
    for _ in range(n_images):
        mask = np.zeros((side, side), dtype=bool)
        z = np.full((side, side), -8.0, dtype=np.float32)
        for _ in range(int(rng.integers(2, 6))):
            cy, cx = rng.uniform(0, side, 2)
            r = rng.uniform(0.05, 0.2) * side
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
            mask |= disc
            z[disc] = rng.choice([14.0, 2.0])  # bright (saturating) or faint objects
        for _ in range(int(rng.integers(0, 3))):
            cy, cx = rng.uniform(0, side, 2)
            z[(yy - cy) ** 2 + (xx - cx) ** 2 < (0.04 * side) ** 2] = 3.0  # unlabelled debris
        z += np.float32(3.5) * rng.standard_normal((side, side), dtype=np.float32)
        out.append((z, mask))
    return out


def head_output(head: str, z: np.ndarray) -> np.ndarray:
    """What each head makes of the logits, in float32 as a network computes it."""
    if head == "sigmoid":
        return np.float32(1) / (np.float32(1) + np.exp(-z))
    if head == "hard_sigmoid":
        return np.clip(z / np.float32(6) + np.float32(0.5), 0, 1).astype(np.float32)
    if head == "relu":
        return np.maximum(z, np.float32(0))
    return z


class Case:
    """One head's calibration set: the raw pixels and the filled histogram."""

    def __init__(self, head: str) -> None:
        self.head = head
        self.logits = logit_maps()
        self.pairs = [(head_output(head, z), m) for z, m in self.logits]
        self.scores = np.concatenate([s.ravel() for s, _ in self.pairs])
        self.y = np.concatenate([m.ravel() for _, m in self.pairs])
        self.hist = ScoreHistogram(SCALE[head])
        for s, m in self.pairs:
            self.hist.update(s, m)
        self.pos = np.sort(self.scores[self.y])
        self.neg = np.sort(self.scores[~self.y])
        self._reports: dict[str, dict[str, Any]] = {}

    def report(self, strategy: str) -> dict[str, Any]:
        """The report's JSON form: what the API and the CLI give out."""
        if strategy not in self._reports:
            criterion = Criterion(strategy, TARGETS.get(strategy), **COSTS)
            self._reports[strategy] = build_report(self.hist, criterion).to_dict()
        return self._reports[strategy]

    def counts_at(self, t: float) -> tuple[int, int]:
        """Raw (tp, fp): pixels with score >= t."""
        tp = self.pos.size - int(np.searchsorted(self.pos, t, side="left"))
        fp = self.neg.size - int(np.searchsorted(self.neg, t, side="left"))
        return tp, fp


@pytest.fixture(scope="module", params=HEADS)
def case(request: pytest.FixtureRequest) -> Case:
    return Case(request.param)


def test_synthetic_maps_have_the_hazards() -> None:
    sigmoid = Case("sigmoid")
    assert np.mean(sigmoid.scores == 1.0) > 0.01  # float32 sigmoid saturates at 1.0
    assert np.mean(sigmoid.scores < 1e-4) > 0.3
    relu = Case("relu")
    assert np.mean(relu.scores == 0.0) > 0.5  # a ReLU head piles most pixels onto 0
    hard = Case("hard_sigmoid")
    assert np.mean(hard.scores == 0.0) > 0.3 and np.mean(hard.scores == 1.0) > 0.02


def test_auc_and_average_precision_match_sklearn_on_raw_pixels(case: Case) -> None:
    report = case.report("youden")
    assert abs(report["auc"] - roc_auc_score(case.y, case.scores)) < 2e-3
    assert abs(report["auc"] - roc_auc_score(case.y, case.scores)) < 1e-4  # in practice
    assert abs(report["average_precision"] - average_precision_score(case.y, case.scores)) < 2e-3


def test_roc_points_are_exact_on_raw_pixels(case: Case) -> None:
    """Each reported point is the raw-pixel rate at its threshold, exactly."""
    report = case.report("youden")
    roc = report["roc"]
    n_pos, n_neg = case.pos.size, case.neg.size
    assert 2 < len(roc["fpr"]) <= 512
    for fpr, tpr, t in zip(roc["fpr"], roc["tpr"], roc["thresholds"], strict=True):
        tp, fp = case.counts_at(t)
        assert tp / n_pos == pytest.approx(tpr, abs=1e-12)
        assert fp / n_neg == pytest.approx(fpr, abs=1e-12)
    assert np.all(np.diff(roc["thresholds"]) < 0)
    assert (roc["fpr"][0], roc["tpr"][0]) == (0.0, 0.0)
    assert (roc["fpr"][-1], roc["tpr"][-1]) == (1.0, 1.0)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_strategy_matches_raw_optimum(case: Case, strategy: str) -> None:
    """Criterion within a few pixels of the raw optimum, threshold within 2e-3 of the raw argmax."""
    report = case.report(strategy)
    fpr, tpr, thr = roc_curve(case.y, case.scores, drop_intermediate=False)
    n_pos, n_neg = case.pos.size, case.neg.size
    raw_value, raw_ok = raw_objective(
        strategy, np.rint(tpr * n_pos), np.rint(fpr * n_neg), n_pos, n_neg
    )
    best = int(np.flatnonzero(raw_ok)[np.argmax(raw_value[raw_ok])])

    t = report["threshold"]
    tp, fp = case.counts_at(t)
    value, ok = raw_objective(strategy, np.array([tp]), np.array([fp]), n_pos, n_neg)
    assert ok[0], "the chosen threshold breaks the strategy's constraint on the raw pixels"
    assert value[0] >= raw_value[best] - 5 / min(n_pos, n_neg)
    assert value[0] <= raw_value[best] + 1e-12
    assert abs(t - thr[best]) <= 2e-3, (t, thr[best])
    point = report["operating_points"][strategy]
    assert point["threshold"] == t
    assert report["confusion"] == {"tp": tp, "fp": fp, "tn": n_neg - fp, "fn": n_pos - tp}


def test_operating_points_and_the_fixed_cut(case: Case) -> None:
    report = case.report("target_tpr")
    points = report["operating_points"]
    assert set(points) == {"youden", "closest", "f1", "cost", "target_tpr", "fixed_0.5"}
    for point in points.values():
        assert set(point) == POINT_KEYS
        tp, fp = case.counts_at(point["threshold"])
        assert point["tpr"] == pytest.approx(tp / case.pos.size, abs=1e-12)
        assert point["fpr"] == pytest.approx(fp / case.neg.size, abs=1e-12)
        assert point["f1"] == pytest.approx(2 * tp / (tp + fp + case.pos.size))
        assert point["iou"] == pytest.approx(tp / (fp + case.pos.size))
        assert point["youden_j"] == pytest.approx(point["tpr"] - point["fpr"])
    cut = points["fixed_0.5"]
    assert cut["threshold"] == 0.5
    tp = int(np.count_nonzero(case.scores[case.y] >= 0.5))
    assert cut["tpr"] == tp / case.pos.size
    # The chosen and the 0.5 points lie on the reported curve.
    curve = set(zip(report["roc"]["fpr"], report["roc"]["tpr"], strict=True))
    assert (cut["fpr"], cut["tpr"]) in curve
    chosen = points["target_tpr"]
    assert (chosen["fpr"], chosen["tpr"]) in curve
    assert report["threshold"] in report["roc"]["thresholds"]


def _plain(value: Any) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or type(value) in (str, int, bool)


def test_report_schema_is_plain_json(case: Case) -> None:
    report = case.report("youden")
    assert set(report) == REPORT_KEYS | EXTRA_KEYS
    assert _plain(report)
    json.dumps(report, allow_nan=False)
    assert report["n_images"] == 24 and report["n_pixels"] == case.scores.size
    assert report["positive_fraction"] == pytest.approx(case.y.mean())
    assert report["is_probability"] == (SCALE[case.head] == "probability")
    assert set(report["confusion"]) == {"tp", "fp", "tn", "fn"}
    assert sum(report["confusion"].values()) == case.scores.size
    assert report["strategy"] == "youden" and report["target"] is None
    q = report["quantisation"]
    lo, hi = q["threshold_bin"]
    assert lo <= report["threshold"] < hi
    if case.head in ("sigmoid", "hard_sigmoid"):
        assert isinstance(report["brier"], float) and isinstance(report["ece"], float)
        assert len(report["reliability"]) == 15
        t = report["threshold"]
        assert q["threshold_logit"] == pytest.approx(math.log(t / (1 - t)), abs=1e-9)
    else:
        assert report["brier"] is None and report["ece"] is None
        assert report["reliability"] is None


def test_ties_at_the_extremes_are_reported(case: Case) -> None:
    report = case.report("youden")
    s = case.scores
    assert report["tied_at_min_fraction"] == np.count_nonzero(s == s.min()) / s.size
    rng = report["score_range"]
    assert rng["min"] == float(s.min()) and rng["max"] == float(s.max())
    assert rng["tied_at_max_fraction"] == np.count_nonzero(s == s.max()) / s.size
    if case.head == "relu":
        assert report["tied_at_min_fraction"] > 0.5


def test_bootstrap_interval_and_per_image_spread(case: Case) -> None:
    report = case.report("youden")
    lo, hi = report["threshold_ci"]
    assert lo < hi
    assert lo <= report["threshold"] <= hi
    spread = report["per_image_thresholds"]
    assert spread["min"] <= spread["q25"] <= spread["median"] <= spread["q75"] <= spread["max"]
    assert 0 < spread["n_images"] <= 24 and spread["sampled"] is False
    # Reproducible: the same seed gives the same interval.
    again = calibrate_arrays(case.pairs, SCALE[case.head], Criterion("youden"))
    assert again.threshold_ci == tuple(report["threshold_ci"])


def test_brier_ece_and_reliability_match_raw_pixels() -> None:
    case = Case("sigmoid")
    report = case.report("youden")
    p = case.scores.astype(np.float64)
    y = case.y
    assert report["brier"] == pytest.approx(np.mean((p - y) ** 2), rel=1e-6)
    rows = np.minimum((p * 15).astype(int), 14)
    ece = 0.0
    for b, row in enumerate(report["reliability"]):
        in_row = rows == b
        assert row["lo"] == b / 15 and row["hi"] == (b + 1) / 15
        # Only pixels within 2**-14 of a row boundary may land in the neighbouring row.
        assert abs(row["count"] - in_row.sum()) <= 2
        if in_row.any():
            assert row["mean_predicted"] == pytest.approx(p[in_row].mean(), abs=1e-4)
            positives = row["observed_frequency"] * row["count"]
            assert abs(positives - y[in_row].sum()) <= 2
            ece += in_row.mean() * abs(p[in_row].mean() - y[in_row].mean())
    assert report["ece"] == pytest.approx(ece, abs=1e-4)


def test_logits_keep_the_order_a_float32_sigmoid_loses() -> None:
    pairs = logit_maps(n_images=12)
    z = np.concatenate([zi.ravel() for zi, _ in pairs])
    y = np.concatenate([m.ravel() for _, m in pairs])
    by_logit = calibrate_arrays(pairs, "probability", Criterion("youden"), logits=True)
    assert by_logit.quantisation.logits_binned is True
    assert abs(by_logit.auc - roc_auc_score(y, z)) < 1e-4
    fpr, tpr, thr = roc_curve(y, z)
    best = thr[np.argmax(tpr - fpr)]
    assert by_logit.quantisation.threshold_logit is not None
    assert abs(by_logit.quantisation.threshold_logit - best) < 2e-3
    # The same maps through a float32 sigmoid: the pixels above a logit of 16.6 tie at 1.0.
    p = [(head_output("sigmoid", zi), m) for zi, m in pairs]
    by_prob = calibrate_arrays(p, "probability", Criterion("youden"))
    assert by_prob.score_range.tied_at_max_fraction > 0.01
    assert by_logit.score_range.tied_at_max_fraction < 1e-3
    assert by_logit.threshold == pytest.approx(by_prob.threshold, abs=2e-3)


def test_threshold_near_one_is_not_rounded() -> None:
    """A float64 threshold of 1 - 1e-9 survives; in logit units it is about 20.7."""
    rng = np.random.default_rng(1)
    z = rng.normal(0, 3, (64, 64)) + 20.0
    mask = z > 20.7 + rng.normal(0, 0.3, z.shape)
    report = calibrate_arrays([(z, mask)], "probability", logits=True)
    assert 0.999999 < report.threshold < 1.0
    assert report.quantisation.threshold_logit == pytest.approx(20.7, abs=0.3)


def test_streaming_equals_one_shot_and_paths_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    pairs = [(head_output("sigmoid", z), m) for z, m in logit_maps(n_images=8)]
    streamed = ScoreHistogram("probability")
    for s, m in pairs:
        streamed.update(s, m)
    whole = ScoreHistogram("probability")
    whole.update(np.concatenate([s for s, _ in pairs]), np.concatenate([m for _, m in pairs]))
    np.testing.assert_array_equal(streamed.counts, whole.counts)
    a, b = build_report(streamed).to_dict(), build_report(whole).to_dict()
    for key in ("threshold", "auc", "average_precision", "confusion", "roc", "ece", "reliability"):
        assert a[key] == b[key], key
    assert a["brier"] == pytest.approx(b["brier"], rel=1e-6)
    # Small images (coarse counts per pixel) and large ones (coarse counts from each full buffer,
    # here two per image) give the same fine and coarse counts.
    monkeypatch.setattr(histogram_module, "CHUNK", 1 << 10)
    monkeypatch.setattr(histogram_module, "BULK", 1 << 11)
    small_steps = ScoreHistogram("probability")
    for s, m in pairs:
        small_steps.update(s, m)
    np.testing.assert_array_equal(small_steps.counts, streamed.counts)
    np.testing.assert_array_equal(small_steps.resampler.kept(), streamed.resampler.kept())


def test_dtypes_and_masks() -> None:
    z, m = logit_maps(n_images=1)[0]
    p32 = head_output("sigmoid", z)
    ref = calibrate_arrays([(p32, m)], "probability")
    same = calibrate_arrays([(p32.astype(np.float64), (m * 255).astype(np.uint8))], "probability")
    assert same.auc == ref.auc and same.threshold == ref.threshold
    counts = np.clip(z * 10, 0, 255).astype(np.uint8)  # an integer-valued unbounded head
    report = calibrate_arrays([(counts, m)], "unbounded")
    assert report.auc == pytest.approx(roc_auc_score(m.ravel(), counts.ravel()), abs=1e-12)
    assert float(report.threshold).is_integer()


def test_one_image_has_no_interval() -> None:
    z, m = logit_maps(n_images=1)[0]
    report = calibrate_arrays([(z, m)], "unbounded")
    assert report.threshold_ci is None
    assert report.per_image_thresholds is not None
    assert report.per_image_thresholds.n_images == 1


def test_reservoir_samples_when_images_exceed_it() -> None:
    hist = ScoreHistogram("unbounded", max_images_kept=4)
    for z, m in logit_maps(n_images=10, side=32):
        hist.update(z, m)
    spread = build_report(hist).per_image_thresholds
    assert spread is not None and spread.sampled is True and spread.n_images <= 4


# -- strategies on hand-made counts ---------------------------------------------------------------


def test_tie_breaking_on_small_counts() -> None:
    # Bins in ascending score order.
    pos = np.array([0, 1, 0, 2, 1, 3])
    neg = np.array([4, 2, 1, 0, 1, 0])
    tp, fp = cumulative_counts(pos, neg)
    assert tp.tolist() == [0, 3, 4, 6, 6, 7, 7]
    assert fp.tolist() == [0, 0, 1, 1, 2, 4, 8]
    # TPR >= 0.8 first holds at index 3 (6/7); index 3 has FP 1 like index 2: the higher TPR wins.
    assert select(tp, fp, Criterion("target_tpr", 0.8)) == 3
    # FPR <= 0.25 allows up to index 4 (2/8); TP 6 first reached at index 3 (lower FPR) wins.
    assert select(tp, fp, Criterion("target_fpr", 0.25)) == 3
    # Precision >= 0.85: index 1 (1.0), 2 (0.8 no), 3 (6/7 = 0.857 yes): highest recall is 3.
    assert select(tp, fp, Criterion("target_precision", 0.85)) == 3
    assert select(tp, fp, Criterion("youden")) == 3
    # Only false negatives cost: the highest threshold with no FN.
    assert select(tp, fp, Criterion("cost", cost_fp=0.0, cost_fn=1.0)) == 5
    # Only false positives cost: nothing positive (index 0) ties with index 1; the higher wins.
    assert select(tp, fp, Criterion("cost", cost_fp=1.0, cost_fn=0.0)) == 0


def test_unreachable_targets_say_so() -> None:
    tp, fp = cumulative_counts(np.array([5, 1]), np.array([5, 4]))
    with pytest.raises(CalibrationError, match="precision"):
        select(tp, fp, Criterion("target_precision", 0.5))
    with pytest.raises(CalibrationError, match="FPR"):
        select(tp, fp, Criterion("target_fpr", 0.1))


# -- errors a person can act on ------------------------------------------------------------------


def _pairs(*items: tuple[Any, Any]) -> list[tuple[Any, Any]]:
    return list(items)


ONES = np.ones((8, 8), dtype=bool)
ZEROS = np.zeros((8, 8), dtype=bool)
HALF = np.tile([True, False], (8, 4))
P = np.linspace(0, 1, 64).reshape(8, 8)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: calibrate_arrays([], "probability"), "empty"),
        (lambda: calibrate_arrays([(P, ZEROS)], "probability"), "no foreground"),
        (lambda: calibrate_arrays([(P, ONES), (P, ONES)], "probability"), "no background"),
        (lambda: calibrate_arrays([(np.where(HALF, np.nan, P), HALF)]), "NaN"),
        (lambda: calibrate_arrays([(np.where(HALF, np.inf, P), HALF)], "unbounded"), "infinite"),
        (lambda: calibrate_arrays([(P * 3, HALF)], "probability"), "outside \\[0, 1\\]"),
        (lambda: calibrate_arrays([(P, HALF[:4])], "probability"), "shape"),
        (lambda: calibrate_arrays([(P[None], HALF)], "probability"), "shape"),
        (lambda: calibrate_arrays([(P[:0], HALF[:0])], "probability"), "empty"),
        (lambda: calibrate_arrays([(P, HALF)], "logit"), "unknown scale"),
        (lambda: Criterion("otsu"), "unknown strategy"),
        (lambda: Criterion("target_tpr"), "needs a target"),
        (lambda: Criterion("target_tpr", target=1.0), "between"),
        (lambda: Criterion("target_fpr", target=0.0), "between"),
        (lambda: Criterion("target_fpr", target=-0.5), "between"),
        (lambda: Criterion("target_tpr", target=95), "between"),
        (lambda: Criterion("f1", target=0.5), "takes no target"),
        (lambda: Criterion("cost", cost_fp=-1), "cost_fp"),
        (lambda: Criterion(cost_fp=0, cost_fn=0), "both be 0"),
        (lambda: Criterion("cost", cost_fn=math.inf), "finite"),
        (lambda: Criterion("target_fpr", target="a lot"), "must be a number"),
        (lambda: calibrate_arrays([(P, HALF)], "unbounded", logits=True), "logits=True"),
        (lambda: calibrate_arrays([(P.astype(complex), HALF)]), "real numbers"),
    ],
)
def test_bad_input_raises_calibration_error(call: Callable[[], Any], message: str) -> None:
    with pytest.raises(CalibrationError, match=message):
        call()


def test_nan_target_and_calibration_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="NaN"):
        Criterion("target_tpr", float("nan"))


def test_rejected_image_leaves_the_histogram_as_it_was() -> None:
    hist = ScoreHistogram("probability")
    hist.update(P, HALF)
    before = (hist.counts.copy(), hist.n_images, hist.n_pixels, hist.squared_error)
    bad = P.copy()
    bad[-1, -1] = np.nan  # found only in the image's last chunk
    with pytest.raises(CalibrationError):
        hist.update(bad, HALF)
    np.testing.assert_array_equal(hist.counts, before[0])
    assert (hist.n_images, hist.n_pixels, hist.squared_error) == before[1:]


# -- memory --------------------------------------------------------------------------------------


def _peak_mb(run: Callable[[], Any]) -> float:
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    run()
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return peak / 2**20


def _stream(n_images: int, side: int) -> Callable[[], CalibrationReport]:
    def run() -> CalibrationReport:
        def images() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for i in range(n_images):
                yield from logit_maps(n_images=1, side=side, seed=i)

        return calibrate_arrays(images(), "unbounded")

    return run


def test_memory_does_not_grow_with_the_number_of_images() -> None:
    small = _peak_mb(_stream(8, 128))
    large = _peak_mb(_stream(48, 128))
    assert large <= 1.25 * small, (small, large)


def test_memory_does_not_grow_with_the_number_of_pixels() -> None:
    z_small, m_small = logit_maps(n_images=1, side=1024)[0]
    z_large, m_large = logit_maps(n_images=1, side=4096)[0]

    def one(z: np.ndarray, m: np.ndarray) -> Callable[[], None]:
        return lambda: ScoreHistogram("unbounded").update(z, m)

    small = _peak_mb(one(z_small, m_small))
    large = _peak_mb(one(z_large, m_large))
    assert large <= 1.25 * small, (small, large)
    assert large < 100


# -- the typed report and its JSON ---------------------------------------------------------------

NESTED_KEYS = {
    "roc": {"fpr", "tpr", "thresholds"},
    "confusion": {"tp", "fp", "tn", "fn"},
    "score_range": {"min", "max", "tied_at_max_fraction"},
    "per_image_thresholds": {"median", "q25", "q75", "min", "max", "n_images", "sampled"},
    "score_profile": {"edges", "fractions", "threshold", "foreground_fraction"},
}
QUANTISATION_KEYS = {"scheme", "n_bins", "mantissa_bits", "threshold_bin", "threshold_logit"} | {
    "logits_binned"
}
LAYOUT_KEYS = {
    "probability": {"max_step_probability", "max_step_logit", "resolved_logit_range"},
    "unbounded": {"max_relative_step", "resolved_range"},
}
ROW_KEYS = {"lo", "hi", "mean_predicted", "observed_frequency", "count"}


def test_typed_report_round_trips_through_the_documented_json(case: Case) -> None:
    report = build_report(case.hist, Criterion("target_fpr", 0.05, **COSTS))
    data = report.to_dict()
    assert set(data) == REPORT_KEYS | EXTRA_KEYS
    for key, keys in NESTED_KEYS.items():
        assert set(data[key]) == keys, key
    assert set(data["quantisation"]) == QUANTISATION_KEYS | LAYOUT_KEYS[SCALE[case.head]]
    assert all(set(point) == POINT_KEYS for point in data["operating_points"].values())
    if data["reliability"] is not None:
        assert all(set(row) == ROW_KEYS for row in data["reliability"])
    assert _plain(data)  # lists, not tuples; no NaN
    # The JSON the store keeps reads back to the same report, value for value.
    assert json.loads(report.to_json()) == data
    again = CalibrationReport.from_dict(json.loads(json.dumps(data)))
    assert again == report and again.to_dict() == data
    assert report.threshold == data["threshold"] == report.chosen.threshold
    assert report.target == 0.05 and report.strategy == "target_fpr"


def test_a_report_is_frozen_and_from_dict_refuses_other_shapes(case: Case) -> None:
    report = build_report(case.hist)
    with pytest.raises(ValueError, match="frozen"):
        report.threshold = 0.5  # type: ignore[misc]
    data = report.to_dict()
    with pytest.raises(ValueError, match="auc"):
        CalibrationReport.from_dict({k: v for k, v in data.items() if k != "auc"})
    with pytest.raises(ValueError, match="surprise"):
        CalibrationReport.from_dict({**data, "surprise": 1})


def test_criterion_is_checked_once_and_holds_plain_floats() -> None:
    criterion = Criterion("target_tpr", np.float32(0.5), cost_fp=np.int64(2))
    assert criterion.target == 0.5 and type(criterion.target) is float
    assert criterion.cost_fp == 2.0 and type(criterion.cost_fp) is float
    # Other strategies keep the costs and drop a target they do not take.
    assert criterion.with_strategy("cost") == Criterion("cost", None, 2.0, 1.0)
    assert criterion.with_strategy("target_tpr") == criterion

"""Per-class calibration against scikit-learn and brute force on the raw one-vs-rest pixels."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from model.calibration import STRATEGIES, Criterion, calibrate_arrays
from model.calibration.classes import ClassHistograms, build_class_report, calibrate_class_arrays
from model.calibration.decision import argmax_labels, confusion, decide, dice_per_class
from model.calibration.schema import MultiClassReport
from model.errors import CalibrationError, LabelError, UnknownClassError
from tests.helpers import COSTS, TARGETS, raw_objective

CLASSES = ("nucleus", "debris")


def softmax_images(
    n_images: int = 12, side: int = 48, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(shares (2, H, W), labels (H, W), share logits (2, H, W)) of a noisy 3-way softmax."""
    rng = np.random.default_rng(seed)
    yy, xx = np.ogrid[:side, :side]
    out = []
    for _ in range(n_images):
        labels = np.zeros((side, side), dtype=np.uint8)
        for value, radius in ((1, 0.2), (2, 0.06), (1, 0.12), (2, 0.05)):
            cy, cx = rng.uniform(0, side, 2)
            labels[(yy - cy) ** 2 + (xx - cx) ** 2 < (radius * side) ** 2] = value
        raw = rng.normal(0.0, 1.6, size=(3, side, side))
        for value in range(3):
            raw[value] += 2.2 * (labels == value)
        raw = raw.astype(np.float32)
        shift = raw - raw.max(axis=0)
        shares = np.exp(shift) / np.exp(shift).sum(axis=0)
        logits = np.stack(
            [raw[c] - np.log(np.exp(np.delete(raw, c, axis=0)).sum(axis=0)) for c in (1, 2)]
        ).astype(np.float32)
        out.append((shares[1:].astype(np.float32), labels, logits))
    return out


@pytest.fixture(scope="module")
def images() -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    return softmax_images()


def _raw(images: list, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = np.concatenate([maps[k].ravel() for maps, _, _ in images]).astype(np.float64)
    truth = np.concatenate([(labels == k + 1).ravel() for _, labels, _ in images])
    return scores, truth


@pytest.mark.parametrize("use_logits", [False, True])
def test_each_class_auc_equals_sklearn_on_raw_one_vs_rest_scores(
    images: list, use_logits: bool
) -> None:
    items = [(m, y, z) if use_logits else (m, y) for m, y, z in images]
    report = calibrate_class_arrays(items, CLASSES, "multiclass", n_bootstrap=0)
    assert list(report.classes) == list(CLASSES)
    for k, name in enumerate(CLASSES):
        scores, truth = _raw(images, k)
        assert report.classes[name].auc == pytest.approx(roc_auc_score(truth, scores), abs=1e-4)
        assert report.classes[name].positive_fraction == pytest.approx(truth.mean(), abs=1e-12)


def _criterion(strategy: str) -> Criterion:
    costs = COSTS if strategy == "cost" else {}
    return Criterion(strategy, TARGETS.get(strategy), **costs)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_each_strategy_finds_each_class_optimum(images: list, strategy: str) -> None:
    report = calibrate_class_arrays(images, CLASSES, criteria=_criterion(strategy), n_bootstrap=0)
    for k, name in enumerate(CLASSES):
        scores, truth = _raw(images, k)
        n_pos, n_neg = int(truth.sum()), int((~truth).sum())
        fpr, tpr, thr = roc_curve(truth, scores, drop_intermediate=False)
        raw_value, raw_ok = raw_objective(
            strategy, np.rint(tpr * n_pos), np.rint(fpr * n_neg), n_pos, n_neg
        )
        best = int(np.flatnonzero(raw_ok)[np.argmax(raw_value[raw_ok])])
        chosen = report.classes[name]
        assert chosen.strategy == strategy
        picked = scores >= chosen.threshold
        tp, fp = int((picked & truth).sum()), int((picked & ~truth).sum())
        value, ok = raw_objective(strategy, np.array([tp]), np.array([fp]), n_pos, n_neg)
        assert ok[0]
        assert value[0] >= raw_value[best] - 5 / min(n_pos, n_neg)
        assert value[0] <= raw_value[best] + 1e-12
        assert abs(chosen.threshold - thr[best]) <= 2e-3
        assert chosen.confusion.tp == tp and chosen.confusion.fp == fp


def test_strategy_target_and_costs_per_class(images: list) -> None:
    criteria = {"nucleus": Criterion("target_tpr", 0.9), "debris": Criterion("cost", None, 1, 4)}
    report = calibrate_class_arrays(images, CLASSES, criteria=criteria, n_bootstrap=0)
    assert report.classes["nucleus"].strategy == "target_tpr"
    assert report.classes["nucleus"].target == 0.9
    assert report.classes["nucleus"].chosen.tpr >= 0.9
    assert report.classes["debris"].strategy == "cost"
    only_one = calibrate_class_arrays(images, CLASSES, criteria={"debris": Criterion("youden")})
    assert only_one.classes["nucleus"].strategy == "f1"
    with pytest.raises(UnknownClassError, match=r"no class 'cell'.*nucleus, debris"):
        calibrate_class_arrays(images, CLASSES, criteria={"cell": Criterion()})


def test_multilabel_classes_are_the_binary_reports(images: list) -> None:
    """Independent channels: each class's report is exactly the binary engine's on that channel."""
    stacked = [(m, np.stack([y == 1, y == 2]), z) for m, y, z in images]
    report = calibrate_class_arrays(stacked, CLASSES, "multilabel", n_bootstrap=50)
    for k, name in enumerate(CLASSES):
        binary = calibrate_arrays(
            ((z[k], y[k]) for _, y, z in stacked), logits=True, n_bootstrap=50, seed=k
        )
        assert report.classes[name] == binary
    summary = report.summary
    assert summary.thresholds == report.thresholds
    assert summary.dice["calibrated"].per_class["debris"] == report.classes["debris"].chosen.f1
    assert "argmax" not in summary.dice and summary.argmax_disagreement is None


def test_the_rule_is_argmax_over_classes_when_every_threshold_is_lowest(images: list) -> None:
    for maps, _, _ in images:
        lowest = [float(m.min()) for m in maps]
        assert np.array_equal(decide(maps, lowest), np.argmax(maps, axis=0) + 1)
        assert np.array_equal(decide(maps, [0.0, 0.0]), np.argmax(maps, axis=0) + 1)
        assert not decide(maps, [1.5, 1.5]).any()


def test_the_rule_pixel_by_pixel() -> None:
    rng = np.random.default_rng(3)
    maps = rng.choice([0.1, 0.3, 0.4, 0.6], size=(3, 9, 9)).astype(np.float32)
    t = [0.35, 0.3, 0.5]
    labels = decide(maps, t)
    for y in range(9):
        for x in range(9):
            passing = [(maps[k, y, x], -k) for k in range(3) if maps[k, y, x] >= t[k]]
            want = 0 if not passing else -max(passing)[1] + 1
            assert labels[y, x] == want
    with pytest.raises(CalibrationError, match="one threshold per class"):
        decide(maps, [0.5, 0.5])


def test_summary_dice_against_argmax_and_the_fixed_cut(images: list) -> None:
    report = calibrate_class_arrays(images, CLASSES, n_bootstrap=0)
    maps = [m for m, _, _ in images]
    truth = [y for _, y, _ in images]

    def exact(rule: list[np.ndarray]) -> np.ndarray:
        matrix = sum(confusion(y, z, 2) for y, z in zip(truth, rule, strict=True))
        return dice_per_class(matrix)

    summary = report.summary
    argmax = exact([argmax_labels(m) for m in maps])
    fixed = exact([decide(m, [0.5, 0.5]) for m in maps])
    chosen = [report.thresholds[name] for name in CLASSES]
    calibrated_labels = [decide(m, chosen) for m in maps]
    calibrated = exact(calibrated_labels)
    assert list(summary.dice) == ["calibrated", "argmax", "fixed_0.5"]
    assert summary.dice["argmax"].exact and summary.dice["fixed_0.5"].exact
    assert list(summary.dice["argmax"].per_class.values()) == pytest.approx(argmax, abs=1e-12)
    assert list(summary.dice["fixed_0.5"].per_class.values()) == pytest.approx(fixed, abs=1e-12)
    # The calibrated rule's Dice comes off the joint grid: close, not exact.
    estimate = summary.dice["calibrated"]
    assert list(estimate.per_class.values()) == pytest.approx(calibrated, abs=0.01)
    assert estimate.macro == pytest.approx(float(np.mean(list(estimate.per_class.values()))))
    differ = sum(
        int((c != argmax_labels(m)).sum()) for c, m in zip(calibrated_labels, maps, strict=True)
    )
    share = differ / sum(m[0].size for m in maps)
    assert summary.argmax_disagreement == pytest.approx(share, abs=0.01)
    assert summary.grid_levels == 256


def test_one_pass_for_k_classes_and_memory_independent_of_images() -> None:
    data = softmax_images(n_images=30, side=32, seed=1)
    served = []

    def once() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for maps, labels, _ in data:
            served.append(1)
            yield maps, labels

    report = calibrate_class_arrays(once(), CLASSES, n_bootstrap=20)
    assert len(served) == 30
    assert all(r.n_images == 30 for r in report.classes.values())
    counts = ClassHistograms(CLASSES, n_bootstrap=20)
    counts.update(*data[0][:2])
    after_one = counts.nbytes
    for maps, labels, _ in data[1:]:
        counts.update(maps, labels)
    assert counts.nbytes == after_one
    assert counts.nbytes < 64 << 20


def test_labels_that_do_not_fit_the_classes_are_refused(images: list) -> None:
    maps, labels, _ = images[0]
    counts = ClassHistograms(CLASSES)
    bad = labels.copy()
    bad[0, 0] = 3
    with pytest.raises(LabelError, match=r"label value 3 is outside 0..2 \(0 background, 1 nucl"):
        counts.update(maps, bad)
    with pytest.raises(LabelError, match=r"integers 0\.\.2"):
        counts.update(maps, labels.astype(np.float32))
    with pytest.raises(CalibrationError, match=r"give \(2, H, W\)"):
        counts.update(maps[:1], labels)
    assert counts.n_images == 0 and all(h.n_images == 0 for h in counts.histograms.values())
    multilabel = ClassHistograms(CLASSES, "multilabel")
    with pytest.raises(LabelError, match="one mask per class"):
        multilabel.update(maps, labels[None])
    empty = ClassHistograms(CLASSES)
    empty.update(maps, np.where(labels == 2, 0, labels).astype(np.uint8))
    with pytest.raises(CalibrationError, match="class 'debris': the masks hold no foreground"):
        build_class_report(empty)


def test_report_round_trips_as_json(images: list) -> None:
    report = calibrate_class_arrays(images[:4], CLASSES, n_bootstrap=0)
    data = report.to_dict()
    assert set(data) == {"mode", "classes", "n_images", "n_pixels", "summary"}
    assert set(data["classes"]) == set(CLASSES)
    assert MultiClassReport.from_dict(data) == report
    assert report.blocking == tuple(
        (name, w) for name, r in report.classes.items() for w in r.blocking
    )

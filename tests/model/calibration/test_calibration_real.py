"""The calibration engine against raw scikit-learn on the shipped models' real outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from model.calibration import STRATEGIES, Criterion, ScoreHistogram, build_report
from model.cards.checkpoint import load_checkpoint
from model.data.datasets import iter_pairs
from model.data.synth import write_dataset
from model.inference.calibrate import add_to_histogram
from model.inference.predict import predict
from tests.helpers import COSTS, TARGETS, raw_objective

pytestmark = pytest.mark.slow  # its module fixture is among the slowest (--durations)

PARAMS = {name: {"target": target} for name, target in TARGETS.items()} | {"cost": COSTS}


@pytest.fixture(scope="module")
def outputs(shipped_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Per head: the filled histogram (as the service fills it), the served scores, the labels."""
    data = tmp_path_factory.mktemp("real") / "set"
    write_dataset(data, n=12, seed=777)  # unseen by training (1) and validation (2)
    result = {}
    for head in ("sigmoid", "relu"):
        network, _ = load_checkpoint(shipped_weights / f"unet-{head}.safetensors")
        hist = ScoreHistogram("probability" if head == "sigmoid" else "unbounded")
        scores, labels = [], []
        for name, image, mask in iter_pairs(data):
            prediction = predict(network, image)
            add_to_histogram(hist, head, prediction, mask, name)
            scores.append(prediction.output.ravel())
            labels.append(mask.ravel())
        result[head] = (hist, np.concatenate(scores), np.concatenate(labels))
    return result


@pytest.mark.parametrize("head", ["sigmoid", "relu"])
def test_auc_matches_raw_pixels(outputs: dict, head: str) -> None:
    hist, scores, labels = outputs[head]
    assert abs(build_report(hist).auc - roc_auc_score(labels, scores)) <= 2e-3


@pytest.mark.parametrize("head", ["sigmoid", "relu"])
def test_each_strategy_lands_on_the_raw_optimum(outputs: dict, head: str) -> None:
    hist, scores, labels = outputs[head]
    fpr, tpr, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    for strategy in STRATEGIES:
        report = build_report(hist, Criterion(strategy, **PARAMS.get(strategy, {})))
        raw_value, raw_ok = raw_objective(
            strategy, np.rint(tpr * n_pos), np.rint(fpr * n_neg), n_pos, n_neg
        )
        best = int(np.flatnonzero(raw_ok)[np.argmax(raw_value[raw_ok])])
        chosen = report.threshold
        selected = scores >= np.float32(chosen)
        tp, fp = int((selected & labels).sum()), int((selected & ~labels).sum())
        value, ok = raw_objective(strategy, np.array([tp]), np.array([fp]), n_pos, n_neg)
        assert ok[0], f"{strategy}: the threshold breaks its constraint on the served scores"
        assert value[0] >= raw_value[best] - 2e-3, strategy
        # Where the criterion is flat the argmax may sit elsewhere; then the value must match.
        assert abs(chosen - thresholds[best]) <= 2e-3 or value[0] >= raw_value[best] - 1e-5, (
            strategy,
            chosen,
            thresholds[best],
        )

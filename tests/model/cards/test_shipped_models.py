"""The shipped checkpoints do what the README says, on data they never saw."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.accuracy import measure
from model.data.synth import write_dataset
from model.inference.calibrate import calibrate_checkpoint

pytestmark = pytest.mark.slow  # its module fixture is among the slowest (--durations)


@pytest.fixture(scope="module")
def accuracy(shipped_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("accuracy")
    # Seeds 1 and 2 trained and validated the models; 501 and 502 are unseen.
    return measure(shipped_weights / "unet-sigmoid.safetensors", 32, 501, 502, work)


def test_calibrated_sigmoid_model_beats_otsu_by_a_wide_margin(accuracy: dict) -> None:
    assert accuracy["dice_calibrated"] >= 0.90
    assert accuracy["dice_calibrated"] >= accuracy["dice_otsu"] + 0.10


def test_synthetic_data_keeps_thresholds_meaningful(accuracy: dict) -> None:
    """A set the model separates perfectly would demonstrate nothing about thresholds."""
    assert 0.95 <= accuracy["test_auc"] <= 0.995


@pytest.mark.parametrize("name", ["unet-sigmoid", "unet-relu"])
def test_checkpoints_record_training_and_their_calibrated_default(
    shipped_weights: Path, name: str
) -> None:
    meta = json.loads((shipped_weights / f"{name}.json").read_text())
    assert meta["architecture"]["head"] == name.removeprefix("unet-")
    assert meta["training"]["epochs"] >= 1 and meta["training"]["val_dice_at_0.5"]
    default = meta["default_threshold"]
    assert default["strategy"] == "f1" and "fixed_0.5" in default["operating_points"]
    assert (shipped_weights / f"{name}.safetensors").stat().st_size < 5_000_000


def test_relu_head_threshold_is_not_the_conventional_half(
    shipped_weights: Path, tmp_path: Path
) -> None:
    """A ReLU head's scores are not probabilities: its Youden cut is read off its own ROC."""
    data = tmp_path / "set"
    write_dataset(data, n=8, seed=503)
    report = calibrate_checkpoint(shipped_weights / "unet-relu.safetensors", data)
    assert not report.is_probability
    assert report.tied_at_min_fraction > 0.3  # most background pixels sit at exactly 0


def test_multiclass_model_with_calibrated_thresholds_on_unseen_data(
    shipped_weights: Path, tmp_path: Path
) -> None:
    """unet-multiclass, served beside the binary models."""
    from model.inference.classes import evaluate_class_checkpoint

    checkpoint = shipped_weights / "unet-multiclass.safetensors"
    data = tmp_path / "unseen"
    write_dataset(data, n=24, seed=602, classes=["nucleus", "debris"])  # 1 and 2 trained it
    result = evaluate_class_checkpoint(checkpoint, data)
    assert result["threshold_source"] == "checkpoint default"
    calibrated, argmax = result["dice"]["calibrated"], result["dice"]["argmax"]
    assert calibrated["per_class"]["nucleus"] >= 0.88
    assert calibrated["per_class"]["debris"] >= 0.70
    assert calibrated["macro"] >= argmax["macro"]

"""Recalibrated probabilities: the shipped sigmoid model and a badly scaled TorchScript card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from model import load
from model.calibration import Criterion, ScoreHistogram, build_report
from model.calibration.recalibration import MonotoneMap
from model.cards.sources import load_predictor
from model.data.datasets import iter_pairs
from model.data.synth import write_dataset
from model.errors import CalibrationError
from model.inference.calibrate import add_to_histogram
from model.inference.predict import predict

WEIGHTS = Path(__file__).resolve().parents[3] / "model" / "weights"
METHODS = ("temperature", "platt", "isotonic")


class _Scaled(nn.Module):
    """The shipped network with its logits multiplied by 0.25: badly under-confident."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.body(x) * 0.25  # type: ignore[operator]


@pytest.fixture(scope="module")
def cards(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    """Unseen synthetic images, and the shipped sigmoid card beside a scaled TorchScript card."""
    root = tmp_path_factory.mktemp("recalibration")
    write_dataset(root / "data", n=40, seed=41, size=96)
    net = load(WEIGHTS / "unet-sigmoid.safetensors")
    traced = torch.jit.trace(_Scaled(net).eval(), torch.zeros(1, 1, 64, 64))
    torch.jit.save(traced, str(root / "scaled.pt"))
    meta = json.loads((WEIGHTS / "unet-sigmoid.json").read_text())
    card = {
        "source": {"format": "torchscript", "path": "scaled.pt"},
        "input": meta["input"],
        "output": {"emits": "logits", "head": "sigmoid"},
        "pad_multiple": 16,
    }
    (root / "scaled.json").write_text(json.dumps(card))
    return root / "data", {"shipped": WEIGHTS / "unet-sigmoid.json", "scaled": root / "scaled.json"}


def _histogram(card: Path, data: Path) -> tuple[ScoreHistogram, list[np.ndarray]]:
    """One pass of the model over the data: its histogram with a pixel sample, and its maps."""
    predictor = load_predictor(card)
    hist = ScoreHistogram("probability", n_bootstrap=20, sample_pixels=True)
    outputs = []
    for name, image, mask in iter_pairs(data, predictor.input):
        prediction = predict(predictor, image)
        add_to_histogram(hist, predictor.head, prediction, mask, name)
        outputs.append(prediction.output)
    return hist, outputs


@pytest.mark.slow
@pytest.mark.parametrize("which", ["shipped", "scaled"])
def test_recalibration_halves_the_held_out_ece(
    cards: tuple[Path, dict[str, Path]], which: str
) -> None:
    data, paths = cards
    hist, outputs = _histogram(paths[which], data)
    for method in METHODS:
        report = build_report(hist, Criterion(), recalibrate=method)
        r = report.recalibration
        assert r is not None and r.method == method
        assert r.n_fit_images + r.n_heldout_images == 40
        # Held-out images only, and the fitted map at least halves the calibration error.
        assert r.ece_after <= 0.5 * r.ece_before, (which, method, r.ece_before, r.ece_after)
        assert r.ece_after < 0.02, (which, method, r.ece_after)
        assert r.heldout.ece_after.low <= r.ece_after <= r.heldout.ece_after.high
        assert (
            r.foreground.brier_after.value < r.foreground.brier_before.value or which == "shipped"
        )
        assert abs(r.auc_after - r.auc_before) <= 1e-9
        # Masks are the same on either scale: the threshold goes through the same map.
        rescale = MonotoneMap.of(r)
        cut = rescale.threshold(report.threshold)
        for scores in outputs[:5]:
            raw_mask = scores >= report.threshold
            np.testing.assert_array_equal(rescale.probabilities(scores) >= cut, raw_mask)
        assert rescale.inverse(cut) == pytest.approx(report.threshold, rel=1e-9)
    if which == "scaled":
        assert hist is not None and report.ece is not None and report.ece > 0.2


def test_an_unknown_method_or_a_missing_sample_is_refused() -> None:
    rng = np.random.default_rng(0)
    hist = ScoreHistogram("probability", sample_pixels=True)
    plain = ScoreHistogram("probability")
    for _ in range(8):
        mask = rng.random((16, 16)) < 0.3
        logits = rng.normal(0, 1, mask.shape) + 2 * mask
        hist.update(logits, mask, logits=True)
        plain.update(logits, mask, logits=True)
    with pytest.raises(CalibrationError, match="temperature, platt, isotonic"):
        build_report(hist, recalibrate="beta")
    with pytest.raises(CalibrationError, match="sample_pixels=True"):
        build_report(plain, recalibrate="platt")


def test_temperature_needs_logits() -> None:
    rng = np.random.default_rng(0)
    hist = ScoreHistogram("unbounded", sample_pixels=True)
    for _ in range(8):
        mask = rng.random((16, 16)) < 0.3
        hist.update(np.maximum(rng.normal(0, 1, mask.shape) + 2 * mask, 0), mask)
    with pytest.raises(CalibrationError, match="use platt or isotonic"):
        build_report(hist, recalibrate="temperature")
    report = build_report(hist, recalibrate="platt")
    assert report.recalibration is not None and report.recalibration.feature == "score"

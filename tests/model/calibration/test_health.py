"""Threshold health: the warnings a calibration report carries, on the shipped models' outputs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.calibration import CalibrationReport, Criterion, calibrate_arrays
from model.calibration.health import AUC_DROP_MIN, MATERIAL_DICE, assess
from model.cards.checkpoint import load_checkpoint
from model.cli import EXIT_BLOCKED, main
from model.data.synth import generate_pair, pair_rng
from model.inference.calibrate import calibrate_model
from model.network.unet import UNet

UNSEEN_SEED = 1001  # not the training (0) or validation (2) seed of the shipped weights


def pairs(
    n: int, size: int = 64, seed: int = UNSEEN_SEED, invert: bool = False
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(name, image, mask) triples of the synthetic generator, optionally in inverted contrast."""
    for i in range(n):
        image, mask = generate_pair(pair_rng(seed, i), size)
        pixels = image.astype(np.float32) / 255.0
        yield f"{i:04d}", (1.0 - pixels if invert else pixels)[None], mask


def calibrate(
    shipped_weights: Path,
    name: str,
    triples: Iterator[tuple[str, np.ndarray, np.ndarray]],
    strategy: str = "f1",
) -> CalibrationReport:
    """The report of a shipped model on `triples`, with its card's reference AUC."""
    network, meta = load_checkpoint(shipped_weights / f"{name}.safetensors")
    assert isinstance(network, UNet)
    return calibrate_model(network, triples, Criterion(strategy), reference_auc=meta.reference_auc)


def codes(report: CalibrationReport) -> dict[str, str]:
    """Warning code -> severity."""
    return {w.code: w.severity for w in report.warnings}


def test_a_healthy_set_has_no_blocking_warning(shipped_weights: Path) -> None:
    report = calibrate(shipped_weights, "unet-sigmoid", pairs(8, 128))
    assert report.strategy == "f1" and report.auc > 0.97
    assert not report.blocking, report.warnings
    assert "auc_below_chance" not in codes(report) and "auc_drop" not in codes(report)
    assert all(w.message for w in report.warnings)


def test_inverted_contrast_is_below_chance_and_blocks(shipped_weights: Path) -> None:
    report = calibrate(shipped_weights, "unet-sigmoid", pairs(6, invert=True))
    assert report.auc < 0.5
    assert codes(report)["auc_below_chance"] == "block"
    assert [w.code for w in report.blocking] == ["auc_below_chance"]
    message = next(w.message for w in report.warnings if w.code == "auc_below_chance")
    assert "inverted contrast" in message and f"{report.auc:.3f}" in message


def test_three_foreground_pixels_are_too_few(shipped_weights: Path) -> None:
    def three() -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        for name, image, mask in pairs(2):
            few = np.zeros(mask.size, dtype=np.uint8)
            if name == "0000":
                few[np.flatnonzero(mask)[:3]] = 1
            yield name, image, few.reshape(mask.shape)

    report = calibrate(shipped_weights, "unet-sigmoid", three())
    assert report.confusion.tp + report.confusion.fn == 3
    assert codes(report)["few_positives"] == "block"


def test_relu_head_ties_and_is_not_a_probability(shipped_weights: Path) -> None:
    report = calibrate(shipped_weights, "unet-relu", pairs(4))
    found = codes(report)
    assert found["tied_scores"] == "warn" and found["not_a_probability"] == "info"
    assert report.tied_at_min_fraction > 0.5 and not report.blocking


def test_youden_on_unseen_data_is_worse_than_the_fixed_cut(shipped_weights: Path) -> None:
    report = calibrate(shipped_weights, "unet-sigmoid", pairs(8, 128), strategy="youden")
    chosen, fixed = report.chosen, report.operating_points["fixed_0.5"]
    assert chosen.f1 < fixed.f1  # the finding, on this set
    assert codes(report)["worse_than_fixed"] == "warn"
    # f1 is Dice's own optimum: never worse than the fixed cut on the set it was read from.
    again = calibrate(shipped_weights, "unet-sigmoid", pairs(8, 128))
    assert "worse_than_fixed" not in codes(again)


def synthetic_report(auc_noise: float, n: int = 12, seed: int = 0) -> CalibrationReport:
    """A report on scores that separate the masks' classes, blurred by `auc_noise`."""
    rng = np.random.default_rng(seed)
    maps = []
    for _ in range(n):
        mask = rng.random((32, 32)) < 0.3
        maps.append((mask * 2.0 + rng.normal(0, auc_noise, mask.shape), mask))
    return calibrate_arrays(maps, "probability", logits=True)


def test_auc_drop_against_a_reference() -> None:
    report = synthetic_report(auc_noise=1.0)
    criterion = Criterion()
    assert not any(w.code == "auc_drop" for w in assess(report, criterion, report.auc))
    small = report.auc + AUC_DROP_MIN / 2
    assert not any(w.code == "auc_drop" for w in assess(report, criterion, min(small, 1.0)))
    warned = [w for w in assess(report, criterion, 0.9999) if w.code == "auc_drop"]
    assert report.auc < 0.95 and warned and warned[0].severity == "warn"


def test_wide_interval_when_it_holds_an_operating_point_that_segments_differently() -> None:
    report = synthetic_report(auc_noise=1.0)
    criterion = Criterion()
    assert not any(w.code == "wide_interval" for w in report.warnings)
    far = [p for p in report.operating_points.values() if abs(p.f1 - report.chosen.f1) > 0.02]
    assert far, "the set should have an operating point with a clearly different Dice"
    low = min(report.threshold, *(p.threshold for p in far))
    high = max(report.threshold, *(p.threshold for p in far))
    wide = report.model_copy(update={"threshold_ci": (low, high)})
    found = [w for w in assess(wide, criterion) if w.code == "wide_interval"]
    assert found and found[0].severity == "warn" and "more images" in found[0].message
    assert MATERIAL_DICE < 0.02


def test_images_disagree_on_a_mixed_set() -> None:
    """Half the images need a low threshold and half a high one."""
    rng = np.random.default_rng(3)
    maps = []
    for i in range(16):
        mask = rng.random((32, 32)) < 0.3
        shift = -3.0 if i % 2 else 3.0
        maps.append((mask * 2.0 - 1.0 + shift + rng.normal(0, 0.5, mask.shape), mask))
    report = calibrate_arrays(maps[:4], "probability", logits=True)
    mixed = calibrate_arrays(maps, "probability", logits=True)
    assert "images_disagree" in codes(mixed)
    assert "images_disagree" not in codes(report)  # under MIN_IMAGES: no verdict


def test_reports_without_warnings_still_read(shipped_weights: Path) -> None:
    """A report stored before threshold health has neither warnings nor a score profile."""
    data = synthetic_report(0.5).to_dict()
    del data["warnings"], data["score_profile"]
    old = CalibrationReport.from_dict(data)
    assert old.warnings == () and old.score_profile is None and not old.blocking


def write_set(folder: Path, invert: bool) -> Path:
    """A data set folder of 4 synthetic 64 x 64 images."""
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True)
    for name, image, mask in pairs(4, invert=invert):
        Image.fromarray((image[0] * 255).round().astype(np.uint8)).save(
            folder / "images" / f"{name}.png"
        )
        Image.fromarray(mask.astype(np.uint8) * 255).save(folder / "masks" / f"{name}.png")
    return folder


def test_cli_prints_warnings_on_stderr_and_strict_exits_3(
    capsys: pytest.CaptureFixture[str], shipped_weights: Path, tmp_path: Path
) -> None:
    data = write_set(tmp_path / "inverted", invert=True)
    argv = ["calibrate", "--checkpoint", str(shipped_weights / "unet-sigmoid.safetensors")]
    argv += ["--data", str(data), "--json"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    report = json.loads(out)  # stdout stays one JSON object
    assert report["strategy"] == "f1"
    assert [w["code"] for w in report["warnings"] if w["severity"] == "block"] == [
        "auc_below_chance"
    ]
    assert "block: auc_below_chance: pixel AUC is" in err
    assert main([*argv, "--strict"]) == EXIT_BLOCKED
    capsys.readouterr()
    healthy = write_set(tmp_path / "healthy", invert=False)
    assert main([*argv[:-3], "--data", str(healthy), "--json", "--strict"]) == 0

"""The model's own command line, `python -m model.cli`, and its make-weights command."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.cli import main
from service.cli import main as unet


def test_unet_offers_every_model_command_and_serve(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        unet(["--help"])
    assert exit_info.value.code == 0
    listed = capsys.readouterr().out
    for command in ("synth", "train", "evaluate", "calibrate", "make-weights", "serve"):
        assert command in listed
    with pytest.raises(SystemExit):
        main(["serve"])  # the model's CLI has no service in it
    assert "invalid choice: 'serve'" in capsys.readouterr().err


def test_python_m_model_cli_runs_a_command(tmp_path: Path) -> None:
    argv = ["synth", "--out", str(tmp_path / "set"), "--n", "1", "--seed", "3", "--size", "16"]
    result = subprocess.run(
        [sys.executable, "-m", "model.cli", *argv, "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(result.stdout) == {
        "out": str(tmp_path / "set"),
        "n": 1,
        "seed": 3,
        "size": 16,
    }
    assert len(list((tmp_path / "set" / "masks").iterdir())) == 1


def test_bad_input_names_the_program(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    argv = ["calibrate", "--checkpoint", str(tmp_path / "x.safetensors")]
    assert main([*argv, "--data", str(tmp_path), "--strategy", "magic"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("python -m model.cli calibrate: error: unknown strategy 'magic'")


def test_make_weights_calibrate_only_rewrites_the_default_threshold(
    capsys: pytest.CaptureFixture[str], shipped_weights: Path, tmp_path: Path
) -> None:
    """Recalibrating copies of the shipped checkpoints; training (30 minutes) is left out."""
    out = tmp_path / "weights"
    out.mkdir()
    for suffix in (".safetensors", ".json"):
        shutil.copy(shipped_weights / f"unet-sigmoid{suffix}", out)
    argv = ["make-weights", "--calibrate-only", "--out", str(out), "--work", str(tmp_path)]
    assert (
        main([*argv, "--n-val", "3", "--heads", "sigmoid", "--strategy", "youden", "--json"]) == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["out"] == str(out) and result["strategy"] == "youden"
    assert set(result["thresholds"]) == {"unet-sigmoid"}
    default = json.loads((out / "unet-sigmoid.json").read_text())["default_threshold"]
    assert default["value"] == result["thresholds"]["unet-sigmoid"]
    assert default["strategy"] == "youden" and default["n_images"] == 3
    assert set(default) == {
        "value",
        "source",
        "strategy",
        "auc",
        "n_images",
        "threshold_ci",
        "operating_points",
    }
    assert "fixed_0.5" in default["operating_points"]
    # The weights are untouched: only the JSON record changed.
    shipped = (shipped_weights / "unet-sigmoid.safetensors").read_bytes()
    assert (out / "unet-sigmoid.safetensors").read_bytes() == shipped


def test_synth_classes_writes_label_images(tmp_path: Path) -> None:
    out = tmp_path / "set"
    argv = ["synth", "--out", str(out), "--n", "2", "--seed", "1", "--size", "64"]
    assert main([*argv, "--classes", "nucleus,debris", "--json"]) == 0
    values = set()
    for path in sorted((out / "masks").iterdir()):
        values |= set(np.unique(np.asarray(Image.open(path))).tolist())
    assert values <= {0, 1, 2} and 1 in values
    assert main([*argv, "--classes", "nucleus,dust"]) == 2


def test_calibrate_with_a_guarantee_and_a_recalibration_prints_both(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    weights = Path(__file__).resolve().parents[2] / "model" / "weights"
    assert (
        main(["synth", "--out", str(tmp_path / "set"), "--n", "12", "--seed", "5", "--size", "64"])
        == 0
    )
    capsys.readouterr()
    argv = ["calibrate", "--checkpoint", str(weights / "unet-sigmoid.json")]
    argv += ["--data", str(tmp_path / "set"), "--strategy", "fnr_control", "--target", "0.2"]
    assert main([*argv, "--recalibrate", "platt"]) == 0
    out = capsys.readouterr().out
    assert "guarantee: FNR <= 0.2 on 12 images" in out
    assert "recalibration (platt, 6 held-out images): ECE" in out
    assert main([*argv, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["guarantee"]["n_images"] == 12 and "recalibration" not in report
    assert main([*argv, "--target", "0.05"]) == 2
    assert "needs at least 19" in capsys.readouterr().err

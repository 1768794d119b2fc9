"""The `unet` command line, run as users run it: real data folders, real checkpoints."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.cli import main


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main([*argv, "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1, "--json prints exactly one JSON object"
    return json.loads(out)


def fails_cleanly(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Exit code 2 and one error line on stderr, no traceback."""
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cli") / "set"
    assert main(["synth", "--out", str(folder), "--n", "6", "--seed", "77", "--size", "64"]) == 0
    return folder


def test_synth_writes_matching_binary_pairs(data: Path) -> None:
    images = sorted(p.name for p in (data / "images").iterdir())
    assert images == sorted(p.name for p in (data / "masks").iterdir()) and len(images) == 6
    mask = np.asarray(Image.open(data / "masks" / images[0]))
    assert set(np.unique(mask)) <= {0, 255}


@pytest.mark.slow
def test_train_evaluate_calibrate_round_trip(
    capsys: pytest.CaptureFixture[str], data: Path, tmp_path: Path
) -> None:
    checkpoint = tmp_path / "tiny.safetensors"
    trained = run_json(
        capsys,
        "train",
        "--data",
        str(data),
        "--out",
        str(checkpoint),
        "--epochs",
        "1",
        "--depth",
        "2",
        "--base-channels",
        "4",
        "--batch-size",
        "4",
        "--activation",
        "elu",
    )
    assert trained["checkpoint"] == str(checkpoint) and checkpoint.with_suffix(".json").is_file()
    record = json.loads(checkpoint.with_suffix(".json").read_text())
    assert record["architecture"]["activation"] == "elu" and record["training"]["epochs"] == 1

    evaluation = run_json(capsys, "evaluate", "--checkpoint", str(checkpoint), "--data", str(data))
    assert {"dice", "iou", "auc", "threshold", "activations"} <= set(evaluation)
    assert evaluation["threshold"] == 0.5 and evaluation["threshold_source"] == "conventional 0.5"
    layers = evaluation["activations"]["hidden"]
    assert layers and all(0 <= layer["dead_fraction"] <= 1 for layer in layers)
    assert 0 <= evaluation["activations"]["head"]["saturated_fraction"] <= 1

    plot = tmp_path / "roc.png"
    report = run_json(
        capsys,
        "calibrate",
        "--checkpoint",
        str(checkpoint),
        "--data",
        str(data),
        "--strategy",
        "target_tpr",
        "--target",
        "0.9",
        "--plot",
        str(plot),
    )
    assert report["strategy"] == "target_tpr" and report["n_images"] == 6
    assert report["operating_points"]["target_tpr"]["tpr"] >= 0.9
    assert Image.open(plot).format == "PNG"


@pytest.mark.slow
def test_console_script_prints_only_json(data: Path) -> None:
    unet = Path(sys.executable).with_name("unet")
    result = subprocess.run(
        [
            str(unet),
            "synth",
            "--out",
            str(data.parent / "more"),
            "--n",
            "1",
            "--seed",
            "1",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(result.stdout)["n"] == 1


def copy_set(data: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(data, tmp_path / "copy"))


def test_missing_mask_is_named(capsys, data: Path, tmp_path: Path) -> None:
    broken = copy_set(data, tmp_path)
    (broken / "masks" / "0002.png").unlink()
    err = fails_cleanly(capsys, "train", "--data", str(broken), "--out", str(tmp_path / "x"))
    assert "0002" in err


def test_unmatched_mask_is_named(capsys, data: Path, tmp_path: Path) -> None:
    broken = copy_set(data, tmp_path)
    shutil.copy(broken / "masks" / "0001.png", broken / "masks" / "stray.png")
    assert "stray" in fails_cleanly(
        capsys, "train", "--data", str(broken), "--out", str(tmp_path / "x")
    )


def test_size_mismatch_is_named(capsys, data: Path, tmp_path: Path) -> None:
    broken = copy_set(data, tmp_path)
    Image.new("L", (10, 10)).save(broken / "masks" / "0003.png")
    err = fails_cleanly(capsys, "train", "--data", str(broken), "--out", str(tmp_path / "x"))
    assert "0003" in err


def test_empty_folder_and_corrupt_image(capsys, data: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "masks").mkdir()
    assert "empty" in fails_cleanly(
        capsys, "train", "--data", str(empty), "--out", str(tmp_path / "x")
    )
    broken = copy_set(data, tmp_path)
    (broken / "images" / "0004.png").write_bytes(b"\x89PNG broken")
    assert "0004.png" in fails_cleanly(
        capsys, "train", "--data", str(broken), "--out", str(tmp_path / "x")
    )


def test_bad_checkpoints_are_named(
    capsys, data: Path, shipped_weights: Path, tmp_path: Path
) -> None:
    checkpoint = tmp_path / "ck.safetensors"
    shutil.copy(shipped_weights / "unet-sigmoid.safetensors", checkpoint)
    err = fails_cleanly(capsys, "evaluate", "--checkpoint", str(checkpoint), "--data", str(data))
    assert "ck.json" in err
    meta = json.loads((shipped_weights / "unet-sigmoid.json").read_text())
    meta["architecture"]["base_channels"] = 8
    checkpoint.with_suffix(".json").write_text(json.dumps(meta))
    err = fails_cleanly(capsys, "evaluate", "--checkpoint", str(checkpoint), "--data", str(data))
    assert "ck.safetensors" in err and "shape" in err


def test_calibration_mistakes_fail_cleanly(capsys, data: Path, shipped_weights: Path) -> None:
    checkpoint = str(shipped_weights / "unet-sigmoid.safetensors")
    base = ("calibrate", "--checkpoint", checkpoint, "--data", str(data))
    assert "strategy" in fails_cleanly(capsys, *base, "--strategy", "magic")
    assert "target" in fails_cleanly(capsys, *base, "--strategy", "target_fpr", "--target", "1.5")
    assert "target" in fails_cleanly(capsys, *base, "--strategy", "target_fpr")

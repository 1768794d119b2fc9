"""`unet quantize`: an INT8 model and its card behind the accuracy gate, and its refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.cards.export import export
from model.cards.sources import load_predictor
from model.cli import main
from model.data.synth import write_dataset
from tests.helpers import scripted

pytestmark = pytest.mark.slow  # each quantisation takes 20-60 s on two shared cores
WEIGHTS = Path(__file__).resolve().parents[3] / "model" / "weights"
N_IMAGES = 24  # 16 calibrate the quantiser, 8 are held out


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("quantize") / "val"
    write_dataset(folder, n=N_IMAGES, seed=2)
    return folder


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    for suffix in (".json", ".safetensors"):
        shutil.copy(WEIGHTS / f"unet-sigmoid{suffix}", tmp_path / f"unet-sigmoid{suffix}")
    return tmp_path / "unet-sigmoid.json"


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["quantize", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_checkpoint_is_quantised_with_its_settings_and_figures_in_the_card(
    checkpoint: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["--checkpoint", str(checkpoint), "--data", str(data), "--json"], capsys)
    assert code == 0
    answer = json.loads(out)
    card_path = Path(answer["card"])
    assert card_path == checkpoint.with_name("unet-sigmoid-int8.json")
    card = json.loads(card_path.read_text())
    assert card["source"] == {"format": "onnx", "path": "unet-sigmoid-int8.onnx"}
    recorded = card["quantization"]
    assert recorded["method"] == "onnxruntime.quantization.quantize_static"
    assert (recorded["quant_format"], recorded["weight_type"]) == ("QDQ", "QInt8")
    assert (recorded["activation_type"], recorded["per_channel"]) == ("QUInt8", True)
    assert recorded["calibration_images"] == 16
    assert recorded["held_out_images"] == N_IMAGES - 16
    gate = recorded["gate"]
    assert gate == answer["gate"] and gate["passed"] is True
    assert abs(gate["fp32"]["auc"] - gate["int8"]["auc"]) <= 0.005
    assert abs(gate["fp32"]["dice"] - gate["int8"]["dice"]) <= 0.005
    assert 0 < gate["mean_abs_diff"] <= gate["max_abs_diff"] < 1
    # The card keeps the checkpoint's normalisation, head and threshold, and it serves.
    original = load_predictor(checkpoint).card
    assert card["threshold"] == original.threshold and card["pad_multiple"] == 8
    int8 = load_predictor(card_path)
    # The graph really is quantised: int8 weights behind QDQ pairs.
    import onnx

    graph = onnx.load(str(card_path.with_suffix(".onnx"))).graph
    assert any(node.op_type == "DequantizeLinear" for node in graph.node)
    assert int8.head == "sigmoid"


def test_an_onnx_card_is_quantised_too(
    checkpoint: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    onnx_card = export(checkpoint, "onnx", tmp_path / "exported" / "plain.onnx")
    out = tmp_path / "served" / "plain-int8.onnx"
    code, printed, _ = run(
        ["--checkpoint", str(onnx_card), "--data", str(data), "--out", str(out)], capsys
    )
    assert code == 0, printed
    assert (
        "AUC" in printed and "Dice at" in printed and f"card: {out.with_suffix('.json')}" in printed
    )
    assert json.loads(out.with_suffix(".json").read_text())["quantization"]["gate"]["passed"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["plain-int8.json", "plain-int8.onnx"]


def test_a_damaged_quantisation_is_refused_with_the_figures(
    checkpoint: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Activations calibrated on blank images only: every real image saturates them.
    damaged = tmp_path / "blank-first"
    shutil.copytree(data, damaged)
    for index in range(16):
        blank = np.zeros((128, 128), dtype=np.uint8)
        Image.fromarray(blank).save(damaged / "images" / f"{index:04d}.png")
    before = sorted(p.name for p in checkpoint.parent.iterdir())
    code, out, err = run(["--checkpoint", str(checkpoint), "--data", str(damaged)], capsys)
    assert code == 2
    assert "AUC" in err and "int8" in err  # the figures
    (line,) = [text for text in err.splitlines() if "error:" in text]
    assert "fell by" in line and "nothing written" in line and "--accept-loss" in line
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == before
    # --accept-loss writes it anyway, and the card says so.
    code, out, _ = run(
        ["--checkpoint", str(checkpoint), "--data", str(damaged), "--accept-loss", "--json"],
        capsys,
    )
    assert code == 0
    recorded = json.loads(Path(json.loads(out)["card"]).read_text())["quantization"]
    assert recorded["accepted_loss"] is True and recorded["gate"]["passed"] is False


@pytest.mark.parametrize("case", ["missing", "empty", "unreadable", "too-few"])
def test_bad_data_is_one_line_exit_2_and_nothing_written(
    case: str, checkpoint: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "data"
    if case == "empty":
        (folder / "images").mkdir(parents=True)
        (folder / "masks").mkdir()
    elif case in ("unreadable", "too-few"):
        shutil.copytree(data, folder)
        if case == "unreadable":
            (folder / "images" / "0003.png").write_bytes(b"not a png")
        else:
            for extra in sorted((folder / "images").iterdir())[5:]:
                extra.unlink()
                (folder / "masks" / extra.name).unlink()
    before = sorted(p.name for p in checkpoint.parent.iterdir())
    code, out, err = run(["--checkpoint", str(checkpoint), "--data", str(folder)], capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "error:" in err
    assert str(folder) in err
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == before


def test_a_model_that_cannot_be_exported_is_one_line_exit_2(
    tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    class Shift(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x - 0.5

    path = scripted(tmp_path, Shift(), "shift")
    card = tmp_path / "shift.json"
    card.write_text(json.dumps({"source": {"format": "torchscript", "path": path}}))
    before = sorted(p.name for p in tmp_path.iterdir())
    code, out, err = run(["--checkpoint", str(card), "--data", str(data)], capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "cannot be quantised" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before

"""Cards that must be refused at load time, each with one line naming the card and the fix.

Non-finite numbers anywhere, thresholds outside the head's range, outputs that are not finite,
not floating point or not what `emits` promises, pickled weights, and model files outside the
card's folder, not regular files or too large.
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from onnx import TensorProto

from model.cards.card import load_card
from model.cards.sources import load_predictor
from model.errors import CardError
from tests.bad_models import (
    affine,
    integer_output,
    monai_card,
    nan_at_side,
    pickled_pt,
    write_card,
    zero_over_zero,
)


def refused(card: Path, words: str, **options: Any) -> str:
    """Load `card`; it must fail with one line naming it and containing `words`."""
    with pytest.raises(CardError) as failure:
        load_predictor(card, **options)
    message = str(failure.value)
    assert "\n" not in message.strip() and "Traceback" not in message, message
    assert str(card) in message, message
    assert words in message, message
    return message


def onnx_card(folder: Path, name: str, model: str, **fields: Any) -> Path:
    """A card serving the ONNX file `model`, with extra top-level `fields`."""
    return write_card(folder, name, {"source": {"format": "onnx", "path": model}} | fields)


# Numbers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('"threshold": NaN', "NaN is not a finite number"),
        ('"threshold": Infinity', "Infinity is not a finite number"),
        ('"threshold": 1e999', "1e999 is out of the range"),
        ('"input": {"normalize": {"method": "fixed", "mean": [NaN], "std": [1]}}', "NaN"),
        ('"tiling": {"overlap": -Infinity}', "-Infinity"),
    ],
)
def test_non_finite_numbers_anywhere_are_refused(tmp_path: Path, text: str, words: str) -> None:
    affine(tmp_path, 1, 0)
    card = tmp_path / "m.json"
    card.write_text('{"source": {"format": "onnx", "path": "affine-1-0.onnx"}, ' + text + "}")
    message = refused(card, words)
    assert "must be finite" in message


def test_a_native_checkpoint_with_a_nan_threshold_is_refused(
    tmp_path: Path, shipped_weights: Path
) -> None:
    raw = json.loads((shipped_weights / "unet-sigmoid.json").read_text())
    raw["default_threshold"]["value"] = float("nan")
    (tmp_path / "m.json").write_text(json.dumps(raw))
    (tmp_path / "m.safetensors").write_bytes(
        (shipped_weights / "unet-sigmoid.safetensors").read_bytes()
    )
    refused(tmp_path / "m.json", "NaN is not a finite number")


@pytest.mark.parametrize(
    ("output", "threshold", "words"),
    [
        ({"emits": "logits", "head": "sigmoid"}, 99, "threshold 99 is outside the sigmoid"),
        ({"emits": "logits", "head": "sigmoid"}, -0.1, "outside the sigmoid output's range [0, 1]"),
        ({"emits": "probabilities"}, 1.5, "outside the probabilities"),
        ({"emits": "logits", "head": "relu"}, -1, "outside the relu output's range [0, inf]"),
    ],
)
def test_a_threshold_outside_the_heads_range_is_refused(
    tmp_path: Path, output: dict[str, str], threshold: float, words: str
) -> None:
    card = onnx_card(tmp_path, "m", affine(tmp_path, 1, 0), output=output, threshold=threshold)
    with pytest.raises(CardError, match="threshold") as failure:
        load_card(card)
    assert words in str(failure.value)


def test_thresholds_inside_the_range_are_kept(tmp_path: Path) -> None:
    model = affine(tmp_path, 1, 0)
    for output, threshold in [({"head": "sigmoid"}, 1.0), ({"emits": "scores"}, -30.0)]:
        card = onnx_card(tmp_path, "m", model, output=output, threshold=threshold)
        assert load_card(card).threshold == threshold


# Outputs on the probe images ----------------------------------------------------------------


def test_an_output_that_is_nan_everywhere_is_refused(tmp_path: Path) -> None:
    refused(onnx_card(tmp_path, "m", zero_over_zero(tmp_path)), "NaN or infinite values")


def test_a_normalisation_that_makes_nan_is_refused_by_the_json(tmp_path: Path) -> None:
    card = tmp_path / "m.json"
    card.write_text(
        json.dumps(
            {
                "source": {"format": "onnx", "path": affine(tmp_path, 1, 0)},
                "input": {"normalize": {"method": "fixed", "mean": [float("nan")], "std": [1]}},
            }
        )
    )
    refused(card, "NaN is not a finite number")


def test_an_output_that_is_nan_only_at_another_size_passes_the_probe(tmp_path: Path) -> None:
    # The probe cannot see every size: warm-up catches this one (tests/service).
    predictor = load_predictor(onnx_card(tmp_path, "m", nan_at_side(tmp_path, 256)))
    assert predictor.out_channels == 1


def test_emits_probabilities_is_checked_on_the_probe(tmp_path: Path) -> None:
    card = onnx_card(tmp_path, "m", affine(tmp_path, 4, -2), output={"emits": "probabilities"})
    refused(card, "outside the probabilities range [0, 1]; set output.emits to logits")
    fine = onnx_card(tmp_path, "ok", affine(tmp_path, 1, 0), output={"emits": "probabilities"})
    assert load_predictor(fine).head == "probabilities"
    scores = onnx_card(tmp_path, "s", affine(tmp_path, 4, -2), output={"emits": "scores"})
    assert load_predictor(scores).head == "scores"


@pytest.mark.parametrize(
    ("to", "named"), [(TensorProto.INT64, "int64"), (TensorProto.BOOL, "bool")]
)
def test_an_integer_or_boolean_output_is_refused(tmp_path: Path, to: int, named: str) -> None:
    card = onnx_card(tmp_path, "m", integer_output(tmp_path, to))
    refused(card, f"the network outputs {named}, not floating-point scores")


def test_a_pickled_pt_is_refused_without_running_it(tmp_path: Path) -> None:
    pytest.importorskip("monai.networks.nets")
    marker = tmp_path / "ran"
    card = monai_card(tmp_path, "m", pickled_pt(tmp_path, marker))
    refused(card, "pickled.pt holds pickled objects that weights_only=True refuses")
    assert not marker.exists()


# Files ----------------------------------------------------------------------------------------


def test_a_model_file_outside_the_cards_folder_is_refused(tmp_path: Path) -> None:
    outside, folder = tmp_path / "outside", tmp_path / "models"
    outside.mkdir()
    folder.mkdir()
    model = affine(outside, 1, 0)
    (folder / "link.onnx").symlink_to(outside / model)
    affine(folder, 1, 0)
    (folder / "inner.onnx").symlink_to(folder / model)  # a link inside the folder is fine
    cases = {
        f"../outside/{model}": "no absolute path, no '..'",
        f"sub/../{model}": "no absolute path, no '..'",
        str(outside / model): "no absolute path, no '..'",
        "link.onnx": "is a link out of the card's folder",
    }
    for path, words in cases.items():
        refused(write_card(folder, "m", {"source": {"format": "onnx", "path": path}}), words)
    assert load_predictor(onnx_card(folder, "ok", "inner.onnx")).out_channels == 1


def test_pipes_devices_and_folders_are_refused_without_opening_them(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.onnx")
    (tmp_path / "folder.onnx").mkdir()
    (tmp_path / "zero.onnx").symlink_to("/dev/zero")
    names = ["pipe.onnx", "folder.onnx"]
    try:  # /dev/zero's own device number, inside the folder (needs root)
        os.mknod(tmp_path / "device.onnx", stat.S_IFCHR | 0o600, os.makedev(1, 5))
        names.append("device.onnx")
    except PermissionError:
        pass
    began = time.monotonic()
    for name in names:
        refused(onnx_card(tmp_path, "m", name), "is not a regular file")
    refused(onnx_card(tmp_path, "m", "zero.onnx"), "is a link out of the card's folder")
    assert time.monotonic() - began < 10  # nothing blocked on the pipe or read the device


def test_a_model_file_over_the_size_limit_is_refused(tmp_path: Path) -> None:
    model = affine(tmp_path, 1, 0)
    size = (tmp_path / model).stat().st_size
    card = onnx_card(tmp_path, "m", model)
    refused(card, f"is {size} bytes, over the limit of {size - 1}", max_bytes=size - 1)
    assert load_predictor(card, max_bytes=size).out_channels == 1


def test_a_card_that_is_a_pipe_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "m.json")
    with pytest.raises(CardError, match="is not a regular file"):
        load_card(tmp_path / "m.json")

"""Model cards: normalisation, the implied card of a checkpoint, and bad cards as one clear line."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch import nn

from model.cards.card import load_card
from model.cards.sources import load_predictor
from model.data.decoding import image_from_bytes
from model.data.normalize import ImageInput, Normalize, normalize, percentiles
from model.data.synth import generate_pair, pair_rng
from model.errors import CardError
from model.inference.predict import predict
from tests.helpers import scripted, write_card


def png(array: np.ndarray) -> bytes:
    """8- or 16-bit grey PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


# Normalisation --------------------------------------------------------------------------------


def test_each_method_maps_the_image_as_documented() -> None:
    rng = np.random.default_rng(0)
    image = rng.uniform(100, 900, (1, 40, 30))
    low, high = np.percentile(image, [1, 99.8])
    by_method = {
        "minmax": (image - image.min()) / (image.max() - image.min()),
        "percentile": (image - low) / (high - low),
        "zscore": (image - image.mean()) / image.std(),
        "dtype": image,
    }
    for method, expected in by_method.items():
        got = normalize(image, Normalize(method=method))
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    rgb = rng.uniform(0, 1, (3, 8, 8))
    fixed = Normalize(method="fixed", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    expected = (rgb - np.array([0.485, 0.456, 0.406])[:, None, None]) / np.array(
        [0.229, 0.224, 0.225]
    )[:, None, None]
    np.testing.assert_allclose(normalize(rgb, fixed), expected, rtol=1e-5)
    assert not normalize(np.full((1, 4, 4), 7.0), Normalize(method="minmax")).any()


@pytest.mark.parametrize("dtype, top", [(np.uint8, 255), (np.uint16, 4095), (np.uint16, 65535)])
def test_integer_images_read_the_same_percentiles_from_a_histogram(dtype: type, top: int) -> None:
    rng = np.random.default_rng(top)
    q = [0.0, 1.0, 37.5, 50.0, 99.8, 100.0]
    for size in (1, 2, 7, 1000, 65536):
        pixels = rng.integers(0, top + 1, size).astype(dtype)
        np.testing.assert_allclose(percentiles(pixels, q), np.percentile(pixels, q), rtol=1e-12)
    flags = rng.random(500) < 0.1
    np.testing.assert_allclose(percentiles(flags, q), np.percentile(flags.astype(float), q))


@pytest.mark.parametrize("method", ["percentile", "minmax", "zscore"])
def test_a_12_bit_upload_normalises_as_its_scaled_floats_would(method: str) -> None:
    # Integers go to `normalize` as they are; the result must not depend on that shortcut.
    rng = np.random.default_rng(12)
    raw = rng.integers(180, 3900, (48, 40)).astype(np.uint16)
    spec = ImageInput(channels=1, normalize=Normalize(method=method))
    served = image_from_bytes(png(raw), spec)
    by_floats = normalize((raw / raw.max())[None], spec.normalize)
    np.testing.assert_allclose(served, by_floats, rtol=1e-5, atol=1e-5)


def test_bad_normalisations_are_refused() -> None:
    with pytest.raises(ValueError, match="low < high"):
        Normalize(method="percentile", low=99, high=1)
    with pytest.raises(ValueError, match="mean"):
        Normalize(method="fixed")
    with pytest.raises(ValueError, match="3 channels"):
        ImageInput(channels=3, normalize=Normalize(method="fixed", mean=(0.5,), std=(0.2,)))


def test_a_16_bit_image_using_little_of_its_range_segments_like_its_8_bit_copy(
    shipped_weights: Path,
) -> None:
    """The issue's case: values 0..235 of 65535 gave an all-background mask under `dtype`."""
    predictor = load_predictor(shipped_weights / "unet-sigmoid.json")
    assert predictor.input.normalize.method == "percentile"
    image8, truth = generate_pair(pair_rng(4242, 0), 192)
    image16 = np.round(image8.astype(np.float64) / image8.max() * 235).astype(np.uint16)
    assert image16.max() == 235 and image16.dtype == np.uint16
    rescaled8 = np.round(image16 / 235.0 * 255).astype(np.uint8)
    threshold = predictor.card.threshold
    masks = []
    for data in (png(image16), png(rescaled8)):
        image = image_from_bytes(data, predictor.input, "x.png")
        masks.append(predict(predictor, image).output >= threshold)
    a, b = masks
    dice = 2 * (a & b).sum() / (a.sum() + b.sum())
    assert dice >= 0.99, dice
    truth_dice = 2 * (a & truth).sum() / (a.sum() + truth.sum())
    assert truth_dice > 0.8  # and the mask is a segmentation, not two matching blanks
    # The old rule, for contrast: divided by 65535 the image is black and so is its mask.
    dark = image_from_bytes(png(image16), 1, "x.png")
    assert (predict(predictor, dark).output >= threshold).mean() < 0.01


# Cards ----------------------------------------------------------------------------------------


def test_a_checkpoint_json_reads_as_the_card_it_implies(shipped_weights: Path) -> None:
    card = load_card(shipped_weights / "unet-relu.safetensors")
    assert card.source.format == "native" and card.source.path == "unet-relu.safetensors"
    assert card.output.emits == "logits" and card.output.head == "relu"
    assert card.pad_multiple == 8
    recorded = json.loads((shipped_weights / "unet-relu.json").read_text())
    assert card.threshold == recorded["default_threshold"]["value"]


def bad_cards(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (card, words its one-line error must contain)."""
    (folder / "junk.onnx").write_bytes(b"not a model")
    same = nn.Conv2d(1, 1, 3, padding=1)
    halves = nn.Conv2d(1, 1, 3, padding=1, stride=2)
    cards = {
        "unknown-source": (
            {"source": {"format": "keras", "path": "m.h5"}},
            "source.format",
        ),
        "missing-file": ({"source": {"format": "torchscript", "path": "gone.pt"}}, "missing"),
        "channel-out-of-range": (
            {
                "source": {"format": "torchscript", "path": scripted(folder, same, "same")},
                "output": {"channel": 2},
            },
            "output.channel is 2",
        ),
        "output-size-differs": (
            {"source": {"format": "torchscript", "path": scripted(folder, halves, "halves")}},
            "output is",
        ),
        "not-torchscript": (
            {"source": {"format": "torchscript", "path": "junk.onnx"}},
            "not a TorchScript file",
        ),
        "wrong-channels": (
            {
                "source": {"format": "torchscript", "path": "same.pt"},
                "input": {"channels": 3},
            },
            "input.channels",
        ),
    }
    return {name: (write_card(folder, name, card), words) for name, (card, words) in cards.items()}


def assert_one_clear_line(message: str, card: Path, words: str) -> None:
    assert "\n" not in message.strip(), message
    assert str(card) in message, message
    assert words in message, message
    assert "Traceback" not in message


def test_bad_cards_fail_as_one_line_naming_the_card_and_the_fix(tmp_path: Path) -> None:
    for card, words in bad_cards(tmp_path).values():
        with pytest.raises(CardError) as failure:
            load_predictor(card)
        assert_one_clear_line(str(failure.value), card, words)


def test_a_missing_extra_names_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "m.onnx").write_bytes(b"\x08\x07")
    card = write_card(tmp_path, "m", {"source": {"format": "onnx", "path": "m.onnx"}})
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(CardError) as failure:
        load_predictor(card)
    assert_one_clear_line(str(failure.value), card, "pip install 'unet-service[onnx]'")
    assert "torch==2.13.0" in str(failure.value)


def test_a_state_dict_that_does_not_fit_its_class(tmp_path: Path) -> None:
    nets = pytest.importorskip("monai.networks.nets")
    from safetensors.torch import save_file

    network = nets.UNet(
        spatial_dims=2, in_channels=1, out_channels=1, channels=(4, 8), strides=(2,)
    )
    save_file(
        {k: v.contiguous() for k, v in network.state_dict().items()}, tmp_path / "w.safetensors"
    )
    args = {
        "spatial_dims": 2,
        "in_channels": 1,
        "out_channels": 1,
        "channels": [8, 16],
        "strides": [2],
    }
    card = write_card(
        tmp_path,
        "misfit",
        {
            "source": {
                "format": "monai",
                "path": "w.safetensors",
                "network": {"name": "UNet", "args": args},
            }
        },
    )
    with pytest.raises(CardError) as failure:
        load_predictor(card)
    assert_one_clear_line(str(failure.value), card, "does not fit UNet")


def test_the_cli_and_unet_import_print_the_same_one_line(tmp_path: Path) -> None:
    cards = bad_cards(tmp_path)
    data = tmp_path / "set"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "model.cli",
            "synth",
            "--out",
            str(data),
            "--n",
            "1",
            "--seed",
            "5",
            "--size",
            "16",
            "--json",
        ],
        check=True,
        capture_output=True,
    )
    card, words = cards["channel-out-of-range"]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "model.cli",
            "calibrate",
            "--checkpoint",
            str(card),
            "--data",
            str(data),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert_one_clear_line(result.stderr, card, words)
    out = tmp_path / "imported.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "model.cli",
            "import",
            str(tmp_path / "same.pt"),
            "--out",
            str(out),
            "--channel",
            "2",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert_one_clear_line(result.stderr, out, "output.channel is 2")
    assert not out.exists()  # a card that cannot serve is not left behind


def test_unet_import_writes_a_card_and_suggests_how_to_read_the_output(tmp_path: Path) -> None:
    squashed = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.Sigmoid())
    network = tmp_path / scripted(tmp_path, squashed, "squashed")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "model.cli",
            "import",
            str(network),
            "--normalize",
            "percentile",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads(result.stdout)
    assert report["card"] == str(tmp_path / "squashed.json")
    low, high = report["output_range"]
    assert 0.0 <= low <= high <= 1.0
    assert report["suggested"]["emits"] == "probabilities"
    card = load_card(tmp_path / "squashed.json")
    assert card.source.format == "torchscript" and card.source.path == "squashed.pt"
    assert card.input.normalize.method == "percentile"


def test_unet_export_writes_a_file_and_a_card_that_serve_the_same_map(
    tmp_path: Path, shipped_weights: Path
) -> None:
    out = tmp_path / "sigmoid.pt2"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "model.cli",
            "export",
            "--checkpoint",
            str(shipped_weights / "unet-sigmoid.json"),
            "--format",
            "exported",
            "--out",
            str(out),
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(result.stdout)["card"] == str(tmp_path / "sigmoid.json")
    native = load_predictor(shipped_weights / "unet-sigmoid.json")
    exported = load_predictor(tmp_path / "sigmoid.json")
    assert exported.card.input == native.card.input
    assert exported.card.threshold == native.card.threshold
    image = image_from_bytes(png(generate_pair(pair_rng(3, 0), 75)[0]), native.input)
    difference = predict(exported, image).output - predict(native, image).output
    assert np.abs(difference).max() <= 1e-5

"""Cards and checkpoints with classes: output.mode and output.classes, and the per-class maps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from model.cards.card import load_card
from model.cards.checkpoint import CheckpointMeta, save
from model.cards.sources import load_predictor
from model.errors import CardError
from model.inference.predict import predict, predict_classes
from model.network.unet import UNet, UNetConfig
from tests.helpers import scripted, write_card

CLASSES = ["nucleus", "debris"]


def image(side: int = 40, channels: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((channels, side, side), dtype=np.float32)


def test_a_binary_card_dumps_as_it_did_before_classes(
    tmp_path: Path, shipped_weights: Path
) -> None:
    conv = scripted(tmp_path, nn.Conv2d(1, 1, 3, padding=1), "conv")
    card = load_card(write_card(tmp_path, "b", {"source": {"format": "torchscript", "path": conv}}))
    assert card.model_dump(mode="json")["output"] == {
        "emits": "logits",
        "channel": 0,
        "head": "sigmoid",
    }
    assert card.output.mode == "binary" and card.output.class_names == ()
    for checkpoint in sorted(shipped_weights.glob("*.json")):
        shipped = load_card(checkpoint)
        if "source" not in json.loads(checkpoint.read_text()) and shipped.output.mode == "binary":
            output = shipped.model_dump(mode="json")["output"]
            assert set(output) == {"emits", "channel", "head"}
    explicit = {"source": {"format": "torchscript", "path": conv}, "output": {"mode": "binary"}}
    dumped = load_card(write_card(tmp_path, "e", explicit)).model_dump(mode="json")
    assert dumped["output"]["mode"] == "binary" and "classes" not in dumped["output"]


BAD_OUTPUTS = {
    "classes-on-binary": ({"classes": CLASSES}, "set output.mode"),
    "no-classes": ({"mode": "multiclass", "head": "softmax"}, "needs output.classes"),
    "sigmoid-multiclass": (
        {"mode": "multiclass", "classes": CLASSES},
        "set output.head to softmax",
    ),
    "scores-multiclass": (
        {"mode": "multiclass", "classes": CLASSES, "emits": "scores"},
        "set output.head to softmax",
    ),
    "softmax-multilabel": (
        {"mode": "multilabel", "classes": CLASSES, "head": "softmax"},
        "use head sigmoid",
    ),
    "repeated": ({"mode": "multilabel", "classes": ["a", "a"]}, "repeats a name"),
    "background": ({"mode": "multilabel", "classes": ["background"]}, "not 'background'"),
    "spaces": ({"mode": "multilabel", "classes": ["two words"]}, "is not allowed"),
    "channel": ({"mode": "multilabel", "classes": CLASSES, "channel": 1}, "drop output.channel"),
}


@pytest.mark.parametrize("name", BAD_OUTPUTS)
def test_bad_classes_fail_as_one_line_naming_the_card_and_the_fix(
    tmp_path: Path, name: str
) -> None:
    output, words = BAD_OUTPUTS[name]
    path = write_card(
        tmp_path, name, {"source": {"format": "onnx", "path": "m.onnx"}, "output": output}
    )
    with pytest.raises(CardError) as failure:
        load_card(path)
    message = str(failure.value)
    assert "\n" not in message and str(path) in message and words in message, message


def test_a_network_with_other_channels_than_the_classes_need_is_refused(tmp_path: Path) -> None:
    conv = scripted(tmp_path, nn.Conv2d(1, 2, 3, padding=1), "two")
    card = {
        "source": {"format": "torchscript", "path": conv},
        "output": {"mode": "multiclass", "head": "softmax", "classes": CLASSES},
    }
    path = write_card(tmp_path, "short", card)
    with pytest.raises(CardError, match=r"must emit 3 channels \(background first, then nucleus"):
        load_predictor(path)


def test_a_monai_unet_with_three_softmax_channels_serves_through_a_card(tmp_path: Path) -> None:
    nets = pytest.importorskip("monai.networks.nets")
    from safetensors.torch import save_file

    args = {
        "spatial_dims": 2,
        "in_channels": 1,
        "out_channels": 3,
        "channels": [4, 8],
        "strides": [2],
    }
    torch.manual_seed(0)
    network = nets.UNet(**args).eval()
    save_file(
        {k: v.contiguous() for k, v in network.state_dict().items()}, tmp_path / "w.safetensors"
    )
    card = {
        "source": {
            "format": "monai",
            "path": "w.safetensors",
            "network": {"name": "UNet", "args": args},
        },
        "output": {"mode": "multiclass", "head": "softmax", "classes": CLASSES},
        "pad_multiple": 2,
    }
    predictor = load_predictor(write_card(tmp_path, "monai3", card))
    assert predictor.mode == "multiclass" and predictor.classes == tuple(CLASSES)
    x = image()
    maps = predict_classes(predictor, x)
    with torch.no_grad():
        expected = torch.softmax(network(torch.from_numpy(x)[None]), dim=1)[0, 1:].numpy()
    assert maps.output.shape == (2, 40, 40)
    np.testing.assert_allclose(maps.output, expected, atol=1e-5)
    # The scores are the shares' logits: sigmoid(score) is the share.
    np.testing.assert_allclose(
        torch.sigmoid(torch.from_numpy(maps.logits)).numpy(), expected, atol=1e-5
    )
    # The single-map path reads the first class.
    np.testing.assert_allclose(predict(predictor, x).output, expected[0], atol=1e-6)


def test_a_two_channel_sigmoid_model_serves_as_multilabel(tmp_path: Path) -> None:
    torch.manual_seed(1)
    conv = nn.Conv2d(1, 2, 3, padding=1)
    card = {
        "source": {"format": "torchscript", "path": scripted(tmp_path, conv, "two")},
        "output": {"mode": "multilabel", "classes": ["cell", "edge"]},
    }
    predictor = load_predictor(write_card(tmp_path, "two", card))
    x = image(seed=2)
    maps = predict_classes(predictor, x)
    with torch.no_grad():
        expected = torch.sigmoid(conv(torch.from_numpy(x)[None]))[0].numpy()
    np.testing.assert_allclose(maps.output, expected, atol=1e-5)


def test_a_native_multiclass_checkpoint_carries_mode_and_classes(tmp_path: Path) -> None:
    config = UNetConfig(out_channels=3, head="softmax", depth=2, base_channels=4)
    torch.manual_seed(0)
    network = UNet(config).eval()
    meta = CheckpointMeta(config, output={"mode": "multiclass", "classes": CLASSES})
    path = save(network, tmp_path / "mc.safetensors", meta)
    written = json.loads(path.with_suffix(".json").read_text())
    assert written["output"] == {"mode": "multiclass", "classes": CLASSES}
    card = load_card(path)
    assert (card.output.mode, card.output.class_names, card.output.class_channels) == (
        "multiclass",
        tuple(CLASSES),
        (1, 2),
    )
    predictor = load_predictor(path)
    x = image(side=37)
    with torch.no_grad():
        expected = network(torch.from_numpy(x)[None])[0, 1:].numpy()
    np.testing.assert_allclose(predict_classes(predictor, x).output, expected, atol=1e-6)
    # A binary checkpoint's JSON has no `output`: its bytes are as before.
    binary = save(UNet(UNetConfig(depth=1, base_channels=4)), tmp_path / "b.safetensors")
    assert "output" not in json.loads(binary.with_suffix(".json").read_text())
    # Classes that do not fit the architecture's channels.
    written["output"]["classes"] = ["nucleus"]
    path.with_suffix(".json").write_text(json.dumps(written))
    with pytest.raises(CardError, match="needs 2 output channels, but the architecture has 3"):
        load_card(path)


def test_an_exported_multiclass_checkpoint_serves_the_same_classes(tmp_path: Path) -> None:
    from model.cards.export import export

    config = UNetConfig(out_channels=3, head="softmax", depth=1, base_channels=4)
    torch.manual_seed(4)
    output = {"mode": "multiclass", "classes": CLASSES}
    meta = CheckpointMeta(config, output=output)
    path = save(UNet(config).eval(), tmp_path / "mc.safetensors", meta)
    card = export(path, "torchscript", tmp_path / "mc-ts.pt")
    written = json.loads(card.read_text())["output"]
    assert written["mode"] == "multiclass" and "channel" not in written
    x = image(side=30)
    exported, native = load_predictor(card), load_predictor(path)
    assert exported.classes == tuple(CLASSES)
    np.testing.assert_allclose(
        predict_classes(exported, x).output, predict_classes(native, x).output, atol=1e-5
    )

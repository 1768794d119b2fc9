"""Multi-class models over labelled sets: per-class calibration and evaluation, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score
from torch import nn

from model.calibration.decision import argmax_labels, confusion, decide, dice_per_class
from model.cards.checkpoint import CheckpointMeta, save
from model.cards.sources import load_predictor
from model.cli import main
from model.data.classes import iter_class_pairs
from model.data.synth import write_dataset
from model.errors import LabelError
from model.inference.classes import calibrate_class_checkpoint, evaluate_class_checkpoint
from model.inference.predict import predict_classes
from model.network.unet import UNet, UNetConfig

CLASSES = ["nucleus", "debris"]


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("labelled")
    write_dataset(root, n=3, seed=9, size=64, classes=CLASSES)
    return root


@pytest.fixture(scope="module")
def multiclass(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small native multiclass U-Net, untrained, its last layer scaled to spread its shares."""
    config = UNetConfig(out_channels=3, head="softmax", depth=1, base_channels=4)
    torch.manual_seed(3)
    network = UNet(config).eval()
    with torch.no_grad():  # shares within 1e-3 of each other would share score bins
        network.classifier.weight.mul_(3000.0)
    output = {"mode": "multiclass", "classes": CLASSES}
    meta = CheckpointMeta(config, output=output)
    return save(network, tmp_path_factory.mktemp("mc") / "mc.safetensors", meta)


def _maps_and_labels(model: Path, data: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    predictor = load_predictor(model)
    items = iter_class_pairs(data, predictor.classes, predictor.mode, predictor.input)
    pairs = [(predict_classes(predictor, image).output, labels) for _, image, labels in items]
    return [m for m, _ in pairs], [y for _, y in pairs]


def test_calibrate_cli_reports_each_class_on_its_raw_roc(
    multiclass: Path, labelled: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["calibrate", "--checkpoint", str(multiclass), "--data", str(labelled)]
    assert main([*argv, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["mode"] == "multiclass" and list(report["classes"]) == CLASSES
    maps, labels = _maps_and_labels(multiclass, labelled)
    for k, name in enumerate(CLASSES):
        scores = np.concatenate([m[k].ravel() for m in maps])
        truth = np.concatenate([(y == k + 1).ravel() for y in labels])
        assert report["classes"][name]["auc"] == pytest.approx(
            roc_auc_score(truth, scores), abs=1e-4
        )
        assert report["classes"][name]["n_images"] == 3
    argmax = dice_per_class(
        sum(confusion(y, argmax_labels(m), 2) for m, y in zip(maps, labels, strict=True))
    )
    assert list(report["summary"]["dice"]["argmax"]["per_class"].values()) == pytest.approx(argmax)
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "nucleus: threshold" in printed and "debris: threshold" in printed
    assert "dice (argmax): macro" in printed and "argmax disagree" in printed


def test_evaluate_counts_the_rule_exactly(
    multiclass: Path, labelled: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    thresholds = {"nucleus": 0.3, "debris": 0.2}
    result = evaluate_class_checkpoint(multiclass, labelled, thresholds)
    maps, labels = _maps_and_labels(multiclass, labelled)
    t = [0.3, 0.2]
    rule = [decide(m, t) for m in maps]
    matrix = sum(confusion(y, z, 2) for y, z in zip(labels, rule, strict=True))
    assert list(result["dice"]["calibrated"]["per_class"].values()) == pytest.approx(
        dice_per_class(matrix), abs=1e-12
    )
    differ = sum(int((z != argmax_labels(m)).sum()) for z, m in zip(rule, maps, strict=True))
    assert result["argmax_disagreement"] == pytest.approx(differ / (3 * 64 * 64))
    assert result["threshold_source"] == "given"
    argv = ["evaluate", "--checkpoint", str(multiclass), "--data", str(labelled)]
    assert main([*argv, "--threshold", "0.3", "--class-threshold", "debris=0.2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["thresholds"] == thresholds
    assert main([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["threshold_source"] == "conventional 0.5"
    assert main([*argv, "--class-threshold", "cell=0.2"]) == 2
    assert "the model's classes are nucleus, debris" in capsys.readouterr().err


def test_multilabel_sets_read_class_folders(labelled: Path, tmp_path: Path) -> None:
    root = tmp_path / "multilabel"
    (root / "images").mkdir(parents=True)
    for name in CLASSES:
        (root / "masks" / name).mkdir(parents=True)
    for path in sorted((labelled / "images").iterdir()):
        (root / "images" / path.name).write_bytes(path.read_bytes())
        labels = np.asarray(Image.open(labelled / "masks" / path.name))
        for value, name in enumerate(CLASSES, start=1):
            Image.fromarray((labels == value).astype(np.uint8) * 255).save(
                root / "masks" / name / path.name
            )
    torch.manual_seed(1)
    conv = nn.Conv2d(1, 2, 3, padding=1)
    torch.jit.save(torch.jit.script(conv.eval()), str(root / "two.pt"))
    card = {
        "source": {"format": "torchscript", "path": "two.pt"},
        "output": {"mode": "multilabel", "classes": CLASSES},
    }
    (root / "two.json").write_text(json.dumps(card))
    report = calibrate_class_checkpoint(root / "two.json", root)
    assert report.mode == "multilabel" and report.n_images == 3
    assert "argmax" not in report.summary.dice
    (root / "masks" / "debris").rename(root / "masks" / "dust")
    with pytest.raises(LabelError, match="exactly nucleus, debris; found folders dust, nucleus"):
        calibrate_class_checkpoint(root / "two.json", root)


def test_a_label_outside_the_classes_names_the_file(
    multiclass: Path, labelled: Path, tmp_path: Path
) -> None:
    root = tmp_path / "bad"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    image = next(iter(sorted((labelled / "images").iterdir())))
    (root / "images" / image.name).write_bytes(image.read_bytes())
    labels = np.asarray(Image.open(labelled / "masks" / image.name)).copy()
    labels[0, 0] = 3
    Image.fromarray(labels).save(root / "masks" / image.name)
    with pytest.raises(LabelError, match=r"0000.png: label value 3 is outside 0..2"):
        calibrate_class_checkpoint(multiclass, root)


def test_tiles_blend_into_the_whole_image_class_maps(multiclass: Path) -> None:
    from model.inference.tiling import TiledImage

    predictor = load_predictor(multiclass)
    x = np.random.default_rng(1).random((1, 70, 90), dtype=np.float32)
    whole = predict_classes(predictor, x)
    for side, tolerance in ((128, 1e-6), (32, 0.05)):
        tiled = TiledImage(predictor, x, tile=side, overlap=0.25)
        for index in range(len(tiled.tiles)):
            crop = torch.from_numpy(tiled.crop(index))[None]
            with torch.inference_mode():
                tiled.add(index, predictor.logits(crop)[0].numpy())
        blended = tiled.finish_classes()
        assert blended.output.shape == (2, 70, 90)
        # One tile is the whole image; smaller tiles see less context near their edges.
        assert np.abs(blended.output - whole.output).mean() < tolerance

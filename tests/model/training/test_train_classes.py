"""Training a multiclass U-Net: label images in, a checkpoint that serves as multiclass out."""

from __future__ import annotations

from pathlib import Path

import torch

from model.cards.sources import load_predictor
from model.data.datasets import SegmentationFolder
from model.data.synth import write_dataset
from model.network.unet import UNetConfig
from model.training.losses import head_loss
from model.training.train import TrainConfig, train


def test_a_label_folder_yields_label_values(tmp_path: Path) -> None:
    write_dataset(tmp_path, n=2, seed=5, size=64, classes=["nucleus", "debris"])
    _, labels = SegmentationFolder(tmp_path, n_classes=2)[0]
    _, binary = SegmentationFolder(tmp_path)[0]
    assert set(torch.unique(labels).tolist()) <= {0.0, 1.0, 2.0}
    assert torch.equal(binary, (labels > 0).float())


def test_the_binary_softmax_loss_is_unchanged() -> None:
    """Two channels: the same cross-entropy and soft Dice on channel 1 as before classes."""
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 8, 8)
    target = (torch.rand(2, 1, 8, 8) > 0.5).float()
    probabilities = logits.softmax(dim=1)[:, 1:2]
    intersection = (probabilities * target).sum()
    dice = 1 - (2 * intersection + 1) / (probabilities.sum() + target.sum() + 1)
    expected = torch.nn.functional.cross_entropy(logits, target[:, 0].long()) + 0.5 * dice
    assert torch.equal(head_loss("softmax", logits, target, 0.5), expected)
    three = head_loss(
        "softmax", torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 1, 8, 8)).float(), 0.5
    )
    assert torch.isfinite(three)


def test_training_with_classes_writes_a_multiclass_checkpoint(tmp_path: Path) -> None:
    classes = ("nucleus", "debris")
    write_dataset(tmp_path / "data", n=4, seed=6, size=32, classes=list(classes))
    architecture = UNetConfig(out_channels=3, head="softmax", depth=1, base_channels=4)
    config = TrainConfig(epochs=1, batch_size=2, device="cpu")
    result = train(
        architecture,
        tmp_path / "data",
        tmp_path / "m.safetensors",
        config,
        progress=False,
        classes=classes,
    )
    assert 0.0 <= result.val_dice[0] <= 1.0
    predictor = load_predictor(result.checkpoint)
    assert predictor.mode == "multiclass" and predictor.classes == classes

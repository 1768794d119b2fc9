"""Training: AdamW with a cosine schedule, validation Dice each epoch, the best epoch kept."""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from model.cards.checkpoint import CheckpointMeta, save
from model.data.datasets import SegmentationFolder
from model.data.normalize import ImageInput, Normalize
from model.network.device import pick_device
from model.network.heads import foreground_channel
from model.network.unet import UNet, UNetConfig
from model.training.losses import head_loss


@dataclass
class TrainConfig:
    """Optimisation settings; all of them go into the checkpoint's training record."""

    epochs: int = 20
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 1e-4
    dice_weight: float = 0.0
    seed: int = 0
    val_fraction: float = 0.1
    device: str = "auto"
    # How images become the network's input; the checkpoint's card records it for serving.
    normalize: dict[str, Any] = field(default_factory=lambda: {"method": "dtype"})


@dataclass
class TrainResult:
    """What a training run produced."""

    checkpoint: Path
    best_epoch: int
    val_dice: list[float] = field(default_factory=list)


def train(
    architecture: UNetConfig,
    data: Path,
    out: Path,
    config: TrainConfig | None = None,
    val_data: Path | None = None,
    progress: bool = True,
    on_epoch: Callable[[int, UNet], None] | None = None,
    classes: tuple[str, ...] | None = None,
) -> TrainResult:
    """Train a U-Net on the data set at `data` and write the best epoch's checkpoint to `out`.

    With `classes` the masks are label images and the model is multiclass: a softmax head over
    background and the classes (`architecture.out_channels` = K + 1), validated by macro Dice at
    argmax, its checkpoint carrying the mode and classes.

    `on_epoch(epoch, model)` runs after each epoch's validation (studies record activations there);
    its time counts in the record's `seconds`.
    """
    config = config or TrainConfig()
    torch.manual_seed(config.seed)
    device = pick_device(config.device)
    channels = ImageInput(
        channels=architecture.in_channels, normalize=Normalize.model_validate(config.normalize)
    )
    if classes is not None and (
        architecture.head != "softmax" or architecture.out_channels != len(classes) + 1
    ):
        raise ValueError(
            f"{len(classes)} classes need a softmax head with {len(classes) + 1} output channels"
        )
    n_classes = None if classes is None else len(classes)
    train_set, val_set = _split(data, val_data, channels, config, n_classes)
    generator = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(train_set, config.batch_size, shuffle=True, generator=generator)
    model = UNet(architecture).to(device)
    optimiser = torch.optim.AdamW(model.parameters(), config.lr, weight_decay=config.weight_decay)
    total_steps = config.epochs * len(loader)
    warmup = max(1, total_steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: min(1.0, (step + 1) / warmup) * _cosine(step, total_steps)
    )
    started = time.time()
    history: list[float] = []
    best_state, best_epoch = copy.deepcopy(model.state_dict()), 0
    bar = tqdm(range(1, config.epochs + 1), desc="train", disable=not progress, file=sys.stderr)
    for epoch in bar:
        model.train()
        running = 0.0
        for images, masks in loader:
            images, masks = images.to(device), masks.to(device)
            loss = head_loss(architecture.head, model.logits(images), masks, config.dice_weight)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            running += loss.item()
        history.append(validation_dice(model, val_set, device))
        if on_epoch is not None:
            on_epoch(epoch, model)
        if history[-1] >= max(history):
            best_state, best_epoch = copy.deepcopy(model.state_dict()), epoch
        bar.set_postfix(loss=f"{running / len(loader):.4f}", val_dice=f"{history[-1]:.4f}")
    model.load_state_dict(best_state)
    record: dict[str, Any] = {
        **asdict(config),
        "data": str(data),
        "val_data": str(val_data) if val_data else None,
        "n_train": len(train_set),
        "n_val": len(val_set),
        "loss": _loss_name(architecture.head, config.dice_weight),
        "optimiser": "AdamW, linear warm-up then cosine decay, per step",
        "val_dice_at_0.5": [round(d, 5) for d in history],
        "best_epoch": best_epoch,
        "seconds": round(time.time() - started, 1),
        "device": str(device),
        "torch": torch.__version__,
    }
    meta = CheckpointMeta(
        architecture,
        training=record,
        input=channels.model_dump(mode="json"),
        output=None if classes is None else {"mode": "multiclass", "classes": list(classes)},
    )
    path = save(model.cpu().eval(), out, meta)
    return TrainResult(path, best_epoch, history)


@torch.inference_mode()
def validation_dice(
    model: UNet, dataset: SegmentationFolder | Subset[Any], device: torch.device
) -> float:
    """Pixel Dice over the whole validation set at the conventional 0.5 cut.

    A multiclass model (softmax over 3 or more channels) scores the macro Dice at argmax.
    """
    model.eval()
    if model.config.head == "softmax" and model.config.out_channels > 2:
        return _macro_dice(model, dataset, device)
    channel = foreground_channel(model.config.head)
    intersection = total = 0.0
    for images, masks in DataLoader(dataset, batch_size=16):
        predicted = model(images.to(device))[:, channel : channel + 1] >= 0.5
        truth = masks.to(device) > 0.5
        intersection += (predicted & truth).sum().item()
        total += predicted.sum().item() + truth.sum().item()
    return 2 * intersection / total if total else 1.0


def _macro_dice(
    model: UNet, dataset: SegmentationFolder | Subset[Any], device: torch.device
) -> float:
    """Mean over classes of each class's pixel Dice at argmax (background included)."""
    k = model.config.out_channels
    counts = torch.zeros((3, k), dtype=torch.float64)  # intersection, predicted, true
    for images, masks in DataLoader(dataset, batch_size=16):
        predicted = model.logits(images.to(device)).argmax(dim=1).cpu()
        truth = masks[:, 0].long()
        for label in range(1, k):
            p, t = predicted == label, truth == label
            counts[:, label] += torch.tensor([(p & t).sum(), p.sum(), t.sum()], dtype=torch.float64)
    dice = [
        1.0 if counts[1:, c].sum() == 0 else float(2 * counts[0, c] / counts[1:, c].sum())
        for c in range(1, k)
    ]
    return sum(dice) / len(dice)


def _split(
    data: Path,
    val_data: Path | None,
    channels: ImageInput,
    config: TrainConfig,
    n_classes: int | None = None,
) -> tuple[SegmentationFolder | Subset[Any], SegmentationFolder | Subset[Any]]:
    if val_data is not None:
        return (
            SegmentationFolder(data, channels, augment=True, seed=config.seed, n_classes=n_classes),
            SegmentationFolder(val_data, channels, n_classes=n_classes),
        )
    augmented = SegmentationFolder(
        data, channels, augment=True, seed=config.seed, n_classes=n_classes
    )
    plain = SegmentationFolder(data, channels, n_classes=n_classes)
    n_val = max(1, round(len(plain) * config.val_fraction))
    if len(plain) < 2:
        raise ValueError(f"{data}: needs at least 2 images to hold one out for validation")
    order = torch.randperm(len(plain), generator=torch.Generator().manual_seed(config.seed))
    return Subset(augmented, order[n_val:].tolist()), Subset(plain, order[:n_val].tolist())


def _cosine(step: int, total: int) -> float:
    return 0.5 * (1 + math.cos(math.pi * min(step, total) / max(1, total)))


def _loss_name(head: str, dice_weight: float) -> str:
    base = {
        "softmax": "cross-entropy on logits",
        "relu": "mean squared error of ReLU(logits) against the 0/1 mask",
    }.get(head, "BCE-with-logits")
    return f"{base} + {dice_weight} x soft Dice" if dice_weight else base

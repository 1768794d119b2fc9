"""Native checkpoints: this package's own U-Net from `NAME.safetensors` + `NAME.json`."""

from __future__ import annotations

from pathlib import Path

import torch

from model.cards.card import ModelCard
from model.cards.checkpoint import CheckpointMeta, load_checkpoint
from model.cards.sources.base import Predictor
from model.network.heads import foreground_channel
from model.network.unet import UNet


class NativePredictor(Predictor):
    """A `model.network.unet.UNet`; `network` and `meta` stay reachable for training-side tools."""

    def __init__(
        self, card: ModelCard, card_path: Path, network: UNet, meta: CheckpointMeta | None
    ) -> None:
        super().__init__(card, card_path, next(network.parameters()).device)
        self.network = network
        self.meta = meta
        self.out_channels = network.config.out_channels

    def run_padded(self, batch: torch.Tensor) -> torch.Tensor:
        """The U-Net's logits; its sides are already multiples of 2**depth."""
        return self.network.body(batch)

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """The U-Net's own `logits`: same padding, and its input check's message."""
        return self.network.logits(batch)

    def channels_last(self) -> None:
        """Convolutions run faster channels-last on both CPU and GPU."""
        self.network.to(memory_format=torch.channels_last)  # type: ignore[call-overload]


def native_card(network: UNet) -> ModelCard:
    """The card a native network implies: logits through its own head, `dtype` input."""
    config = network.config
    return ModelCard.model_validate(
        {
            "source": {"format": "native"},
            "input": {"channels": config.in_channels},
            "output": {
                "emits": "logits",
                "channel": foreground_channel(config.head),
                "head": config.head,
            },
            "pad_multiple": network.multiple,
        }
    )


def as_predictor(model: UNet | Predictor) -> Predictor:
    """`model` behind the predictor interface (a bare UNet gets the card it implies)."""
    if isinstance(model, Predictor):
        return model
    return NativePredictor(native_card(model), Path("<in-memory network>"), model, None)


def checkpoint_meta(predictor: Predictor) -> CheckpointMeta | None:
    """A native checkpoint's metadata (architecture, training, evidence); None for other sources."""
    return predictor.meta if isinstance(predictor, NativePredictor) else None


def load_native(card: ModelCard, card_path: Path, device: torch.device) -> NativePredictor:
    """The checkpoint named by the card (its `.safetensors`, validated against its JSON)."""
    network, meta = load_checkpoint(card.source_path(card_path), device)
    return NativePredictor(card, card_path, network, meta)

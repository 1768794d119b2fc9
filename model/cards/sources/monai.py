"""MONAI networks (extra `[monai]`): a class of `monai.networks.nets` and a state dict."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from model.cards.card import ModelCard
from model.cards.sources.base import Predictor
from model.cards.sources.extras import require
from model.errors import CardError


def read_state_dict(path: Path, card_path: Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors, or from a `.pt` read with `weights_only=True` (no pickle)."""
    if not path.is_file():
        raise CardError(f"{card_path}: {path} is missing; put the weights there or fix source.path")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state: Any = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CardError(
            f"{card_path}: {path.name} holds pickled objects that weights_only=True refuses (none "
            "was run); save model.state_dict() with safetensors or torch.save"
        ) from None
    except (SafetensorError, RuntimeError, OSError, ValueError) as error:
        raise CardError(
            f"{card_path}: {path.name} is not a state dict ({str(error)[:200]}); save it with "
            "safetensors or torch.save(model.state_dict())"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a training checkpoint that wraps its weights
    if not isinstance(state, dict):
        raise CardError(f"{card_path}: {path.name} holds no state dict; save model.state_dict()")
    return state


class MonaiPredictor(Predictor):
    """A MONAI network built from the card's class and arguments, weights loaded strictly."""

    def __init__(self, card: ModelCard, card_path: Path, device: torch.device) -> None:
        super().__init__(card, card_path, device)
        nets = require("monai.networks.nets", "monai", card_path, "monai")
        spec = card.source.network
        if spec is None:
            raise CardError(
                f'{card_path}: a monai source needs source.network, e.g. {{"name": "UNet", '
                '"args": {"spatial_dims": 2, ...}}'
            )
        cls = getattr(nets, spec.name, None)
        if not isinstance(cls, type) or not issubclass(cls, torch.nn.Module):
            raise CardError(
                f"{card_path}: source.network.name {spec.name!r} is not a network of "
                "monai.networks.nets; give a class name such as UNet or BasicUNet"
            )
        try:
            network = cls(**spec.args)
        except (TypeError, ValueError, AssertionError) as error:
            raise CardError(
                f"{card_path}: {spec.name}(**source.network.args) failed ({error}); fix the args"
            ) from None
        state = read_state_dict(card.source_path(card_path), card_path)
        try:
            network.load_state_dict(state, strict=True)
        except RuntimeError as error:
            first = str(error).strip().splitlines()
            detail = " ".join(line.strip() for line in first[1:3])[:300]
            raise CardError(
                f"{card_path}: the state dict does not fit {spec.name}(**args) ({detail}); give "
                "the args the network was trained with"
            ) from None
        self.module = network.to(device).eval()

    def run_padded(self, batch: torch.Tensor) -> torch.Tensor:
        """The network's forward."""
        out: torch.Tensor = self.module(batch)
        return out

    def channels_last(self) -> None:
        """Convolutions run faster channels-last."""
        self.module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

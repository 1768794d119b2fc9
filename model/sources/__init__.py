"""Model sources: every kind of network a card names, behind the one `Predictor` interface."""

from __future__ import annotations

from pathlib import Path

import torch

from model.card import CardError, load_card
from model.sources.base import Predictor

__all__ = ["Predictor", "load_predictor"]


def load_predictor(path: str | Path, device: str | torch.device = "cpu") -> Predictor:
    """Load the model whose card is at `path`, run a test pass, and return its predictor.

    Every failure is a `CardError` whose one-line message names the card and the fix.
    """
    card_path = Path(path)
    if card_path.suffix == ".safetensors":
        card_path = card_path.with_suffix(".json")
    card = load_card(card_path)
    device = torch.device(device)
    fmt = card.source.format
    if fmt != "native" and not card.source_path(card_path).exists():
        raise CardError(
            f"{card_path}: {card.source_path(card_path)} is missing; put the {fmt} file there "
            "or fix source.path"
        )
    predictor: Predictor
    if fmt == "native":
        from model.sources.native import load_native

        predictor = load_native(card, card_path, device)
    elif fmt == "monai":
        from model.sources.monai import MonaiPredictor

        predictor = MonaiPredictor(card, card_path, device)
    elif fmt == "torchscript":
        from model.sources.torchscript import TorchScriptPredictor

        predictor = TorchScriptPredictor(card, card_path, device)
    elif fmt == "exported":
        from model.sources.exported import ExportedPredictor

        predictor = ExportedPredictor(card, card_path, device)
    else:
        from model.sources.onnx import OnnxPredictor

        predictor = OnnxPredictor(card, card_path, device)
    predictor.probe()
    return predictor

"""Model sources: every kind of network a card names, behind the one `Predictor` interface."""

from __future__ import annotations

from pathlib import Path

import torch

from model.cards.card import DEFAULT_MAX_MODEL_BYTES, ModelCard, check_file, load_card
from model.cards.sources.base import Predictor
from model.errors import CardError, CheckpointError

__all__ = ["Predictor", "load_predictor"]


def load_predictor(
    path: str | Path,
    device: str | torch.device = "cpu",
    max_bytes: int = DEFAULT_MAX_MODEL_BYTES,
) -> Predictor:
    """Load the model whose card is at `path`, run test passes, and return its predictor.

    The network file must be a regular file of at most `max_bytes` inside the card's folder.
    Every failure, whatever the loading library raises, is a `CardError` whose one-line message
    names the card and the fix.
    """
    card_path = Path(path)
    if card_path.suffix == ".safetensors":
        card_path = card_path.with_suffix(".json")
    card = load_card(card_path)
    check_file(card.source_path(card_path), card_path, max_bytes, f"{card.source.path}")
    try:
        predictor = _construct(card, card_path, torch.device(device))
        predictor.probe()
    except CheckpointError:  # CardError included: already one line naming the card
        raise
    except Exception as error:  # a library's own type (UnpicklingError, ...): still one line
        text = " ".join(str(error).split())[:300] or "no message"
        raise CardError(
            f"{card_path}: loading the {card.source.format} model failed "
            f"({type(error).__name__}: {text}); check the network file and the card"
        ) from None
    return predictor


def _construct(card: ModelCard, card_path: Path, device: torch.device) -> Predictor:
    """The predictor of the card's source format."""
    fmt = card.source.format
    predictor: Predictor
    if fmt == "native":
        from model.cards.sources.native import load_native

        predictor = load_native(card, card_path, device)
    elif fmt == "monai":
        from model.cards.sources.monai import MonaiPredictor

        predictor = MonaiPredictor(card, card_path, device)
    elif fmt == "torchscript":
        from model.cards.sources.torchscript import TorchScriptPredictor

        predictor = TorchScriptPredictor(card, card_path, device)
    elif fmt == "exported":
        from model.cards.sources.exported import ExportedPredictor

        predictor = ExportedPredictor(card, card_path, device)
    else:
        from model.cards.sources.onnx import OnnxPredictor

        predictor = OnnxPredictor(card, card_path, device)
    return predictor

"""TorchScript networks (`torch.jit.save`), e.g. an smp model scripted or traced by its owner."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from model.cards.card import ModelCard
from model.cards.sources.base import Predictor
from model.errors import CardError


class TorchScriptPredictor(Predictor):
    """A `torch.jit.ScriptModule` run as it is."""

    def __init__(self, card: ModelCard, card_path: Path, device: torch.device) -> None:
        super().__init__(card, card_path, device)
        path = card.source_path(card_path)
        try:
            with warnings.catch_warnings():
                # TorchScript is deprecated in torch 2.x, yet it is what smp users export to.
                warnings.simplefilter("ignore", DeprecationWarning)
                self.module = torch.jit.load(str(path), map_location=device).eval()
        except (RuntimeError, ValueError, OSError) as error:
            raise CardError(
                f"{card_path}: {path.name} is not a TorchScript file ({str(error)[:200]}); "
                "write it with torch.jit.save"
            ) from None

    def run_padded(self, batch: torch.Tensor) -> torch.Tensor:
        """The scripted module's forward."""
        out: torch.Tensor = self.module(batch)
        return out

"""`torch.export` programs (`torch.export.save`, `.pt2`)."""

from __future__ import annotations

from pathlib import Path

import torch

from model.cards.card import ModelCard
from model.cards.sources.base import Predictor
from model.errors import CardError


class ExportedPredictor(Predictor):
    """An exported program's module; its input sides must fit the shapes it was exported for."""

    def __init__(self, card: ModelCard, card_path: Path, device: torch.device) -> None:
        super().__init__(card, card_path, device)
        path = card.source_path(card_path)
        try:
            program = torch.export.load(str(path))
        except Exception as error:  # the loader raises many types for a file that is not one
            raise CardError(
                f"{card_path}: {path.name} is not a torch.export program ({str(error)[:200]}); "
                "write it with torch.export.save"
            ) from None
        self.module = program.module().to(device)

    def run_padded(self, batch: torch.Tensor) -> torch.Tensor:
        """The exported program's forward."""
        out: torch.Tensor = self.module(batch)
        return out

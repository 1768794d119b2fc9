"""The served models: every model card in the model folder, loaded once at start-up.

A model that fails to load does not take the others down: it is kept with its reason, listed as
unavailable, and requests to it are answered with that reason (as Triton's model repository
does); the service refuses to start only when no model at all could be loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from model.card import CardError, ModelCard, load_card
from model.checkpoint import CheckpointError, CheckpointMeta, checkpoint_digest
from model.heads import head_range, is_probability
from model.normalize import ImageInput
from model.sources import Predictor, load_predictor
from model.sources.native import checkpoint_meta

log = logging.getLogger(__name__)


@dataclass
class ServedModel:
    """One loaded model, named by its card's file stem."""

    name: str
    path: Path  # the card
    network: Predictor
    digest: str
    device: torch.device

    @property
    def card(self) -> ModelCard:
        """The model's card."""
        return self.network.card

    @property
    def meta(self) -> CheckpointMeta | None:
        """A native checkpoint's metadata (architecture, training); None for other sources."""
        return checkpoint_meta(self.network)

    @property
    def head(self) -> str:
        """The served head (sigmoid, relu, ...; `probabilities` or `scores` when emitted)."""
        return self.network.head

    @property
    def is_probability(self) -> bool:
        """Whether the served output lies in [0, 1]."""
        return is_probability(self.head)

    @property
    def output_range(self) -> tuple[float, float]:
        """The closed interval the served output lies in."""
        return head_range(self.head)

    @property
    def in_channels(self) -> int:
        """How many channels input images are converted to."""
        return self.network.in_channels

    @property
    def input(self) -> ImageInput:
        """How a decoded image becomes the network's input (channels, order, normalisation)."""
        return self.network.input

    @property
    def default_threshold(self) -> float:
        """The card's own threshold, or the conventional 0.5 when it carries none."""
        threshold = self.card.threshold
        return 0.5 if threshold is None else float(threshold)


def model_digest(card_path: Path, card: ModelCard) -> str:
    """SHA-256 over the card and its network file: a threshold belongs to exactly these bytes."""
    if card.source.format == "native" and "source" not in json.loads(card_path.read_text()):
        return checkpoint_digest(card_path)  # a checkpoint pair keeps its digest (and thresholds)
    digest = hashlib.sha256(card_path.read_bytes())
    digest.update(card.source_path(card_path).read_bytes())
    return digest.hexdigest()


def _referenced(cards: list[Path]) -> set[Path]:
    """Network files that some card names (not models of their own)."""
    files = set()
    for card_path in cards:
        try:
            card = load_card(card_path)
            files.add(card.source_path(card_path))
        except CheckpointError:
            continue
    return files


class ModelRegistry:
    """Name -> ServedModel, fixed for the life of the process; failed models keep their reason."""

    def __init__(self, models: dict[str, ServedModel], failed: dict[str, str] | None = None):
        self._models = models
        self._failed = dict(failed or {})

    @classmethod
    def from_folder(cls, folder: Path, device: torch.device) -> ModelRegistry:
        """Load every card (`*.json`, or a checkpoint pair) in `folder` onto `device`."""
        if not folder.is_dir():
            raise CheckpointError(f"{folder}: model folder not found; set UNET_MODEL_DIR")
        cards = sorted(folder.glob("*.json"))
        used = _referenced(cards)
        orphans = [
            weights
            for weights in sorted(folder.glob("*.safetensors"))
            if not weights.with_suffix(".json").exists() and weights.resolve() not in used
        ]
        models: dict[str, ServedModel] = {}
        failed: dict[str, str] = {}
        for weights in orphans:
            failed[weights.stem] = (
                f"{weights.with_suffix('.json')}: missing; a checkpoint needs its .json beside "
                "the weights"
            )
        for card_path in cards:
            name = card_path.stem
            try:
                network = load_predictor(card_path, device)
                digest = model_digest(card_path, network.card)
            except (CheckpointError, OSError) as error:
                failed[name] = (
                    str(error)
                    if isinstance(error, CardError | CheckpointError)
                    else (f"{card_path}: cannot read ({error}); check the files")
                )
                log.error("model %s is unavailable: %s", name, failed[name])
                continue
            models[name] = ServedModel(name, card_path, network, digest, device)
            log.info(
                "loaded model %s (%s, %s head) on %s",
                name,
                network.card.source.format,
                network.head,
                device,
            )
        if not models:
            reasons = "; ".join(failed.values()) or f"no model cards (*.json) in {folder}"
            raise CheckpointError(f"{folder}: no model could be loaded: {reasons}")
        return cls(models, failed)

    def get(self, name: str) -> ServedModel | None:
        """The model called `name`, or None."""
        return self._models.get(name)

    def failure(self, name: str) -> str | None:
        """Why model `name` could not be loaded, or None when it is served or unknown."""
        return self._failed.get(name)

    def failures(self) -> dict[str, str]:
        """Every model that failed to load, with its reason, by name."""
        return dict(sorted(self._failed.items()))

    def names(self) -> list[str]:
        """The served model names, sorted."""
        return sorted(self._models)

    def __iter__(self) -> Iterator[ServedModel]:
        return iter(self._models[name] for name in self.names())

"""The served models: every checkpoint in the model folder, loaded once at start-up."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from model.checkpoint import CheckpointError, CheckpointMeta, checkpoint_digest, load_checkpoint
from model.heads import head_range, is_probability
from model.unet import UNet

log = logging.getLogger(__name__)


@dataclass
class ServedModel:
    """One loaded checkpoint, named by its file stem."""

    name: str
    path: Path
    network: UNet
    meta: CheckpointMeta
    digest: str
    device: torch.device

    @property
    def head(self) -> str:
        """The output head's name."""
        return self.meta.architecture.head

    @property
    def is_probability(self) -> bool:
        """Whether the head's output lies in [0, 1]."""
        return is_probability(self.head)

    @property
    def output_range(self) -> tuple[float, float]:
        """The closed interval the head's output lies in."""
        return head_range(self.head)

    @property
    def in_channels(self) -> int:
        """How many channels input images are converted to."""
        return self.meta.architecture.in_channels

    @property
    def default_threshold(self) -> float:
        """The checkpoint's own threshold, or the conventional 0.5 when it carries none."""
        return self.meta.threshold


class ModelRegistry:
    """Name -> ServedModel, fixed for the life of the process."""

    def __init__(self, models: dict[str, ServedModel]) -> None:
        self._models = models

    @classmethod
    def from_folder(cls, folder: Path, device: torch.device) -> ModelRegistry:
        """Load every `*.safetensors` checkpoint in `folder` onto `device`."""
        if not folder.is_dir():
            raise CheckpointError(f"{folder}: model folder not found; set UNET_MODEL_DIR")
        models = {}
        for weights in sorted(folder.glob("*.safetensors")):
            network, meta = load_checkpoint(weights, device)
            models[weights.stem] = ServedModel(
                name=weights.stem,
                path=weights,
                network=network,
                meta=meta,
                digest=checkpoint_digest(weights),
                device=device,
            )
            log.info(
                "loaded model %s (%s head) on %s", weights.stem, meta.architecture.head, device
            )
        if not models:
            raise CheckpointError(f"{folder}: no *.safetensors checkpoints to serve")
        return cls(models)

    def get(self, name: str) -> ServedModel | None:
        """The model called `name`, or None."""
        return self._models.get(name)

    def names(self) -> list[str]:
        """The served model names, sorted."""
        return sorted(self._models)

    def __iter__(self) -> Iterator[ServedModel]:
        return iter(self._models[name] for name in self.names())

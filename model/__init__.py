"""The network, its data, training, evaluation and calibration maths; knows nothing of HTTP."""

from model.cards.checkpoint import checkpoint_digest, load, load_checkpoint, save
from model.errors import CheckpointError
from model.network.unet import UNet, UNetConfig

__all__ = [
    "CheckpointError",
    "UNet",
    "UNetConfig",
    "checkpoint_digest",
    "load",
    "load_checkpoint",
    "save",
]
